//! TLS helpers: certificates made at test time (rcgen; openssl for RSA and key conversions) in a temp dir per test, and a rustls client that trusts only them.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::{pki_types::CertificateDer, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use super::{Lines, Response, SOON};

/// The name every generated leaf certificate is issued for.
pub const HOST: &str = "localhost";

/// The private key forms drainproxy must accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    RsaPkcs8,
    RsaPkcs1,
    EcdsaPkcs8,
    EcdsaSec1,
    Ed25519,
}

impl KeyKind {
    /// The PEM label the key file must carry, so a test knows which form it fed in.
    pub fn label(self) -> &'static str {
        match self {
            KeyKind::RsaPkcs1 => "-----BEGIN RSA PRIVATE KEY-----",
            KeyKind::EcdsaSec1 => "-----BEGIN EC PRIVATE KEY-----",
            _ => "-----BEGIN PRIVATE KEY-----",
        }
    }
}

/// A certificate chain and its key as PEM text, with what a client needs to check it.
pub struct Pem {
    /// The chain as served: the leaf first, then any intermediates.
    pub cert: String,
    pub key: String,
    /// The leaf as DER, to compare with what a client was shown.
    pub leaf: CertificateDer<'static>,
    /// The certificate a client trusts: the leaf itself when self-signed, the root CA otherwise.
    pub root: CertificateDer<'static>,
}

impl Pem {
    /// A self-signed ECDSA P-256 certificate for [`HOST`].
    pub fn self_signed() -> Pem {
        Pem::with_key(KeyKind::EcdsaPkcs8)
    }

    /// A self-signed certificate for [`HOST`] whose key file is in the given form.
    pub fn with_key(kind: KeyKind) -> Pem {
        let pkcs8 = match kind {
            KeyKind::RsaPkcs8 | KeyKind::RsaPkcs1 => {
                // ring cannot generate RSA keys; openssl can.
                openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], "")
            }
            KeyKind::EcdsaPkcs8 | KeyKind::EcdsaSec1 => {
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem()
            }
            KeyKind::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().serialize_pem(),
        };
        let key_pair = KeyPair::from_pem(&pkcs8).expect("rcgen reads the PKCS#8 key");
        let cert = leaf_params("self-signed").self_signed(&key_pair).unwrap();
        let key = match kind {
            KeyKind::RsaPkcs1 => openssl(&["pkey", "-traditional"], &pkcs8),
            KeyKind::EcdsaSec1 => openssl(&["ec"], &pkcs8),
            _ => pkcs8,
        };
        assert!(key.contains(kind.label()), "{kind:?} key is not in its form:\n{key}");
        Pem { cert: cert.pem(), key, leaf: cert.der().clone(), root: cert.der().clone() }
    }

    /// A leaf signed by an intermediate CA signed by a root CA; the PEM holds
    /// the leaf and the intermediate, and a client trusts only the root, so
    /// it succeeds only if the whole chain is served.
    pub fn chain() -> Pem {
        let root_key = KeyPair::generate().unwrap();
        let root = ca_params("drainproxy test root").self_signed(&root_key).unwrap();
        let mid_key = KeyPair::generate().unwrap();
        let mid = ca_params("drainproxy test intermediate").signed_by(&mid_key, &root, &root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params("leaf").signed_by(&leaf_key, &mid, &mid_key).unwrap();
        Pem {
            cert: format!("{}{}", leaf.pem(), mid.pem()),
            key: leaf_key.serialize_pem(),
            leaf: leaf.der().clone(),
            root: root.der().clone(),
        }
    }
}

fn leaf_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(vec![HOST.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Runs the openssl CLI with `stdin`, returns its stdout; panics with its stderr on failure.
pub fn openssl(args: &[&str], stdin: &str) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl CLI is installed");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A directory unique to this process and test, removed on drop.
pub struct Dir(PathBuf);

impl Dir {
    pub fn new(test: &str) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("drainproxy-tls-{}-{test}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    /// The directory itself, as a command-line argument.
    pub fn root(&self) -> String {
        arg(&self.0)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name`, returns its path as a command-line argument.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        arg(&path)
    }

    /// Replaces `name` atomically, as Kubernetes and cert-manager do: write
    /// a temp file beside it, then rename it over.
    pub fn replace(&self, name: &str, contents: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    /// Writes `cert.pem` and `key.pem`; returns their paths.
    pub fn install(&self, pem: &Pem) -> (String, String) {
        (self.write("cert.pem", &pem.cert), self.write("key.pem", &pem.key))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn arg(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_string()
}

/// A rustls client (ring provider) that trusts exactly `roots`, offering `alpn`.
pub fn client_config(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).expect("a valid trust anchor");
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects and completes the handshake (or returns why it failed).
pub async fn try_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(SOON, async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config).connect(ServerName::try_from(HOST).unwrap(), tcp).await
    })
    .await
    .expect("TLS connect timed out")
}

pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    try_connect(addr, config).await.expect("TLS handshake")
}

/// The leaf certificate the server presented.
pub fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    peer_chain(stream)[0].clone()
}

/// Every certificate the server presented, leaf first.
pub fn peer_chain(stream: &TlsStream<TcpStream>) -> Vec<CertificateDer<'static>> {
    stream.get_ref().1.peer_certificates().expect("the server presented certificates").to_vec()
}

/// The protocol ALPN settled on.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// How a TLS connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsEnd {
    /// The server sent close_notify: a clean TLS close.
    CloseNotify,
    /// The TCP stream ended without close_notify (a truncation in TLS terms).
    NoCloseNotify,
    Reset,
    Data(Vec<u8>),
    Error(String),
}

/// A raw HTTP/1.1 client over TLS.
pub struct TlsClient {
    pub stream: BufReader<TlsStream<TcpStream>>,
}

impl TlsClient {
    /// Connects offering ALPN `http/1.1` and checks that it was chosen.
    pub async fn connect(addr: SocketAddr, roots: &[&CertificateDer<'static>]) -> TlsClient {
        let stream = connect(addr, client_config(roots, &[b"http/1.1"])).await;
        assert_eq!(alpn(&stream).as_deref(), Some(&b"http/1.1"[..]), "ALPN");
        TlsClient { stream: BufReader::new(stream) }
    }

    pub fn from_stream(stream: TlsStream<TcpStream>) -> TlsClient {
        TlsClient { stream: BufReader::new(stream) }
    }

    pub fn peer_leaf(&self) -> CertificateDer<'static> {
        peer_leaf(self.stream.get_ref())
    }

    pub async fn start_get(&mut self, path: &str) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        let tls = self.stream.get_mut();
        tls.write_all(req.as_bytes()).await.expect("write request");
        tls.flush().await.expect("flush request");
    }

    pub async fn get(&mut self, path: &str) -> Response {
        self.start_get(path).await;
        self.response().await
    }

    /// Reads a whole response (Content-Length or chunked body).
    pub async fn response(&mut self) -> Response {
        tokio::time::timeout(SOON, async {
            let mut res = super::read_head(&mut self.stream).await;
            super::read_body(&mut self.stream, &mut res).await;
            res
        })
        .await
        .expect("response timed out")
    }

    /// Reads until the server ends the connection, and tells how.
    pub async fn end(&mut self) -> TlsEnd {
        let mut buf = vec![0; 4096];
        match tokio::time::timeout(SOON, self.stream.read(&mut buf)).await.expect("connection stayed open") {
            Ok(0) => TlsEnd::CloseNotify,
            Ok(n) => TlsEnd::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => TlsEnd::NoCloseNotify,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => TlsEnd::Reset,
            Err(e) => TlsEnd::Error(e.to_string()),
        }
    }
}

/// An HTTP/2 client over TLS (ALPN `h2`, checked): the sender, the
/// connection task, and a way to see how the server ended the TLS stream.
pub async fn h2(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
) -> (h2::client::SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>, EndSeen) {
    let stream = connect(addr, client_config(roots, &[b"h2", b"http/1.1"])).await;
    assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]), "ALPN");
    let seen = EndSeen::default();
    let stream = Recorded { io: Some(stream), seen: seen.clone() };
    let (send, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    (send, tokio::spawn(conn), seen)
}

/// How the server ended a TLS stream that h2 owns.
#[derive(Clone, Default)]
pub struct EndSeen(Arc<Mutex<Seen>>);

#[derive(Default)]
struct Seen {
    end: Option<TlsEnd>,
    /// The stream, handed back when h2 drops it.
    left: Option<TlsStream<TcpStream>>,
}

impl EndSeen {
    /// Once h2 is done with the connection: the end h2 read, or, when h2
    /// closed its side before the server's end arrived, the end read now.
    pub async fn end(&self) -> TlsEnd {
        let (end, left) = {
            let mut seen = self.0.lock().unwrap();
            (seen.end.take(), seen.left.take())
        };
        if let Some(end) = end {
            return end;
        }
        let stream = left.expect("h2 still holds the connection");
        TlsClient::from_stream(stream).end().await
    }
}

/// Passes everything through, records the first end of the read side, and
/// hands the stream back on drop.
struct Recorded {
    io: Option<TlsStream<TcpStream>>,
    seen: EndSeen,
}

impl Recorded {
    fn io(&mut self) -> Pin<&mut TlsStream<TcpStream>> {
        Pin::new(self.io.as_mut().expect("only taken on drop"))
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.seen.0.lock().unwrap().left = self.io.take();
    }
}

impl AsyncRead for Recorded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = this.io().poll_read(cx, buf);
        let end = match &res {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => Some(TlsEnd::CloseNotify),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Some(TlsEnd::NoCloseNotify),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => Some(TlsEnd::Reset),
            Poll::Ready(Err(e)) => Some(TlsEnd::Error(e.to_string())),
            _ => None,
        };
        if let Some(end) = end {
            this.seen.0.lock().unwrap().end.get_or_insert(end);
        }
        res
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

/// Reads a whole h2 response body.
pub async fn h2_body(res: http::Response<h2::RecvStream>) -> Vec<u8> {
    let mut body = res.into_body();
    let mut all = Vec::new();
    while let Some(chunk) = tokio::time::timeout(SOON, body.data()).await.expect("h2 body timed out") {
        // Capacity is not released: the bodies are far below the initial
        // window, and a WINDOW_UPDATE racing the server's close would make
        // the close look like an error.
        all.extend_from_slice(&chunk.expect("h2 body"));
    }
    all
}

/// Waits for the next line containing every one of `needles`.
pub async fn wait_for_all(lines: &mut Lines, needles: &[&str]) -> String {
    let found = tokio::time::timeout(SOON, async {
        while let Some(line) = lines.rx.recv().await {
            if needles.iter().all(|n| line.contains(n)) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        _ => panic!("no line containing all of {needles:?}; output so far:\n{}", lines.all()),
    }
}

//! TLS termination with rustls: the certificate in service, reloaded on SIGHUP or when its files change.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{bail, Context as _};
use rustls::{
    crypto::{ring, CryptoProvider},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

/// Where the certificate chain and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificate in service; handshakes read it, reloads swap it.
pub struct Certificates {
    files: TlsFiles,
    current: RwLock<Loaded>,
    /// The file contents of the last broken replacement, so the watcher
    /// reports it once rather than every check.
    rejected: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    provider: Arc<CryptoProvider>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// The file contents it came from, to notice changes on disk.
    source: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("files", &self.files).finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("never poisoned: writers do not panic").key.clone())
    }
}

impl Certificates {
    /// Loads the files; every problem is one clear error naming the file.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(ring::default_provider());
        let loaded = load(&files, &provider)?;
        Ok(Arc::new(Certificates { files, current: RwLock::new(loaded), rejected: Default::default(), provider }))
    }

    /// The acceptor for the listener: ALPN h2 then http/1.1.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Re-reads the files if they changed. A broken replacement keeps the
    /// certificate in service and logs why.
    pub fn reload(&self, reason: &str) {
        let on_disk = read_both(&self.files);
        let seen = on_disk.as_ref().is_ok_and(|source| {
            *source == self.current.read().expect("never poisoned").source
                || Some(source) == self.rejected.lock().expect("never poisoned").as_ref()
        });
        if seen && reason != "SIGHUP" {
            return;
        }
        // The bytes compared above are the ones parsed: one read, no race with a writer.
        let (loaded, rejected) = match on_disk {
            Ok(source) => match parse(&self.files, &source, &self.provider) {
                Ok(loaded) => (Ok(loaded), None),
                Err(e) => (Err(e), Some(source)),
            },
            Err(e) => (Err(e), None),
        };
        match loaded {
            Ok(loaded) => {
                *self.current.write().expect("never poisoned") = loaded;
                info!(reason, cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                *self.rejected.lock().expect("never poisoned") = rejected;
                error!(reason, error = %format!("{e:#}"), "TLS certificate reload failed; keeping the current one")
            }
        }
    }

    /// Checks the files every `every` and reloads when they change (mounted
    /// Secrets and cert-manager replace them in place).
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let me = self.clone();
            // File reads block; keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || me.reload("files changed")).await;
        }
    }
}

fn read_both(files: &TlsFiles) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    Ok((read(&files.cert)?, read(&files.key)?))
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> anyhow::Result<Loaded> {
    parse(files, &read_both(files)?, provider)
}

/// Builds the certified key from the files' contents (`source`: cert PEM, key PEM).
fn parse(files: &TlsFiles, source: &(Vec<u8>, Vec<u8>), provider: &CryptoProvider) -> anyhow::Result<Loaded> {
    let (cert_pem, key_pem) = source;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: invalid PEM", files.cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no CERTIFICATE found in the PEM file", files.cert.display());
    }
    // Accepts PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| anyhow::anyhow!("{}: no usable private key ({e})", files.key.display()))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        anyhow::anyhow!("{} and {} do not form a usable pair: {e}", files.cert.display(), files.key.display())
    })?;
    Ok(Loaded { key: Arc::new(key), source: source.clone() })
}

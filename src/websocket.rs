//! Upgraded tunnels, and the clean WebSocket close (1001 Going Away, at a frame boundary) at the grace deadline.

use std::{future::Future, io, time::Duration};

use http::{header, HeaderMap};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{timeout_at, Instant},
};
use tokio_util::sync::CancellationToken;

/// How long after the cut the frames in progress may take to finish and the
/// Close frames to go out. With [`LINGER`] it stays inside the one second
/// `run` gives the connections after the cut before it exits.
const FINISH: Duration = Duration::from_millis(600);
/// How long, once both Close frames are out, to wait for the peers' replies.
const LINGER: Duration = Duration::from_millis(200);
const BUF_SIZE: usize = 16 * 1024;
const OP_CLOSE: u8 = 0x8;
/// RFC 6455 §7.4.1: the endpoint is going away (server shutdown).
const GOING_AWAY: u16 = 1001;

/// How a tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    /// Both sides finished before the cut (or one failed): bytes copied
    /// client→upstream and upstream→client.
    Closed(io::Result<(u64, u64)>),
    /// The cut ended it. `graceful`: a WebSocket whose every open direction
    /// reached a frame boundary and got its Close in time.
    Cut { graceful: bool },
}

/// True when a `101` response switched to WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    crate::proxy::has_token(headers, header::UPGRADE, "websocket")
}

/// Copies between the client's and the app's upgraded sockets until both
/// have finished (an EOF on one side shuts down the other's write half), or
/// until `cut` resolves. Then anything but a WebSocket is closed at once.
///
/// A WebSocket is closed the way RFC 6455 wants, so that browsers and server
/// libraries see a clean close rather than a reset. Messages are never parsed:
/// each direction only follows frame headers (§5.2) as bytes stream through,
/// so at the cut it can forward the rest of the frame in progress and nothing
/// after it, then send its peer a Close 1001 (a Close may sit between the
/// fragments of a message, §5.4, so a frame boundary is enough). All within
/// [`FINISH`]; then [`LINGER`] for the peers' own Close frames.
pub async fn tunnel<C, U>(client: C, upstream: U, websocket: bool, cut: impl Future<Output = ()>) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut upstream_rd, mut upstream_wr) = tokio::io::split(upstream);
    // Client frames are masked, the app's are not (§5.3).
    let (mut from_client, mut from_upstream) = (Frames::new(true), Frames::new(false));
    let stop = CancellationToken::new();
    let finished = {
        let to_upstream = pump(&mut client_rd, &mut upstream_wr, websocket.then_some(&mut from_client), &stop);
        let to_client = pump(&mut upstream_rd, &mut client_wr, websocket.then_some(&mut from_upstream), &stop);
        // An error either way ends both, as with copy_bidirectional.
        let pumps = async { tokio::try_join!(to_upstream, to_client) };
        tokio::pin!(pumps, cut);
        tokio::select! {
            res = &mut pumps => return TunnelEnd::Closed(res.map(|(up, down)| (up.copied, down.copied))),
            () = &mut cut => {}
        }
        if !websocket {
            return TunnelEnd::Cut { graceful: false };
        }
        stop.cancel();
        // Bounded: a peer that does not read would hold a write forever.
        tokio::time::timeout(FINISH, pumps).await
    };
    let Ok(Ok((up, down))) = finished else { return TunnelEnd::Cut { graceful: false } };
    // Both Close frames are out. Read (and drop) what the peers still send
    // until their own Close or EOF: the replies complete the closing
    // handshake, and a socket closed with unread bytes would send a reset.
    let linger = Instant::now() + LINGER;
    tokio::join!(
        await_close(&mut client_rd, &mut from_client, linger),
        await_close(&mut upstream_rd, &mut from_upstream, linger)
    );
    TunnelEnd::Cut { graceful: up.clean && down.clean }
}

struct Pumped {
    copied: u64,
    /// Ended on its own, or ended at the cut with the Close delivered.
    clean: bool,
}

/// One direction: forwards everything until EOF or `stop`, then (WebSocket) goes away cleanly.
async fn pump<R, W>(
    src: &mut R,
    dst: &mut W,
    mut frames: Option<&mut Frames>,
    stop: &CancellationToken,
) -> io::Result<Pumped>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0; BUF_SIZE];
    let mut copied = 0;
    loop {
        let n = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            n = src.read(&mut buf) => n?,
        };
        if n == 0 {
            dst.shutdown().await?;
            return Ok(Pumped { copied, clean: true });
        }
        if let Some(frames) = &mut frames {
            frames.feed(&buf[..n]);
        }
        write(dst, &buf[..n]).await?;
        copied += n as u64;
    }
    let clean = match frames {
        Some(frames) => go_away(src, dst, frames, &mut buf).await?,
        None => false,
    };
    Ok(Pumped { copied, clean })
}

/// After the cut: forwards the rest of the frame in progress, sends `dst` a
/// Close 1001 (unless the source's own Close already reached it), and shuts
/// `dst` down. False when no clean close is possible (the stream is not one
/// we can follow, or the source stopped mid-frame): the sockets are just dropped.
async fn go_away<R, W>(src: &mut R, dst: &mut W, frames: &mut Frames, buf: &mut [u8]) -> io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // A peer that has received a Close must not get a second one (§5.5.1).
    let mut told = frames.closed;
    while !frames.at_boundary() {
        if frames.broken {
            return Ok(false);
        }
        let n = src.read(buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let end = frames.step(&buf[..n]);
        write(dst, &buf[..end]).await?;
        told = frames.closed;
        // Whatever follows the frame is never forwarded, only watched for the source's Close.
        frames.feed(&buf[end..n]);
    }
    if !told {
        write(dst, &close_frame(frames.masked)).await?;
    }
    dst.shutdown().await?;
    Ok(true)
}

/// Reads and drops until the source's Close frame has arrived, EOF, an error, or `until`.
async fn await_close<R: AsyncRead + Unpin>(src: &mut R, frames: &mut Frames, until: Instant) {
    let mut buf = vec![0; BUF_SIZE];
    while !frames.closed {
        match timeout_at(until, src.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => frames.feed(&buf[..n]),
            _ => return,
        }
    }
}

async fn write(dst: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> io::Result<()> {
    dst.write_all(data).await?;
    dst.flush().await
}

/// A Close frame with status 1001 and no reason; masked when it goes to the app (§5.3).
fn close_frame(masked: bool) -> Vec<u8> {
    let [c0, c1] = GOING_AWAY.to_be_bytes();
    if !masked {
        return vec![0x80 | OP_CLOSE, 2, c0, c1];
    }
    let [k0, k1, k2, k3] = mask_key();
    vec![0x80 | OP_CLOSE, 0x80 | 2, k0, k1, k2, k3, c0 ^ k0, c1 ^ k1]
}

/// The key only has to be unpredictable to page scripts (§10.3); our payload
/// is fixed, so std's randomly seeded hasher is enough, without a new crate.
fn mask_key() -> [u8; 4] {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (std::collections::hash_map::RandomState::new().hash_one(now) as u32).to_be_bytes()
}

/// Follows frame boundaries in one direction of a WebSocket byte stream,
/// without buffering payloads.
#[derive(Debug)]
struct Frames {
    /// This direction's frames are masked (client to server).
    masked: bool,
    /// Header of the next frame: at most 2 + 8 (length) + 4 (mask key) bytes.
    head: [u8; 14],
    /// How many header bytes have arrived; with `left == 0`, 0 is a boundary.
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u64,
    opcode: u8,
    /// A whole Close frame has gone by.
    closed: bool,
    /// Something no peer would accept: we lost track, so never inject a frame.
    broken: bool,
}

impl Frames {
    fn new(masked: bool) -> Self {
        Frames { masked, head: [0; 14], have: 0, left: 0, opcode: 0, closed: false, broken: false }
    }

    fn at_boundary(&self) -> bool {
        !self.broken && self.have == 0 && self.left == 0
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.step(data);
            data = &data[n..];
        }
    }

    /// Consumes bytes of the current frame only (from a boundary: the next
    /// one), so the return value is where that frame ends if it ends in `data`.
    fn step(&mut self, data: &[u8]) -> usize {
        if self.broken {
            return data.len();
        }
        let mut used = 0;
        if self.left == 0 {
            while self.have < self.header_len() {
                let Some(&byte) = data.get(used) else { return used };
                self.head[self.have] = byte;
                self.have += 1;
                used += 1;
            }
            self.start_payload();
            if self.broken {
                return data.len();
            }
        }
        let n = self.left.min((data.len() - used) as u64);
        self.left -= n;
        if self.left == 0 && self.opcode == OP_CLOSE {
            self.closed = true;
        }
        used + n as usize
    }

    /// The header's full length, as far as the bytes so far tell.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let length = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + length + if self.head[1] & 0x80 != 0 { 4 } else { 0 }
    }

    fn start_payload(&mut self) {
        let h = &self.head;
        let len = match h[1] & 0x7f {
            126 => u16::from_be_bytes([h[2], h[3]]) as u64,
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => n as u64,
        };
        self.opcode = h[0] & 0x0f;
        let (fin, mask) = (h[0] & 0x80 != 0, h[1] & 0x80 != 0);
        let control = self.opcode & 0x8 != 0;
        // Masking in the wrong direction, a length with the top bit set, a long
        // or fragmented control frame: what RFC 6455 §5.1–5.5 forbids.
        self.broken = mask != self.masked || len >> 63 != 0 || (control && (len > 125 || !fin));
        self.left = len;
        self.have = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A frame with `len` payload bytes of `fill`, in the 7-, 16- or 64-bit length form `len` needs.
    fn frame(opcode: u8, len: usize, masked: bool, fill: u8) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(mask_bit | len as u8),
            126..=0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.resize(f.len() + len, fill);
        f
    }

    #[test]
    fn header_split_across_reads_byte_by_byte() {
        let f = frame(0x2, 300, true, 7); // 16-bit length, masked: 8-byte header
        let mut frames = Frames::new(true);
        for (i, byte) in f.iter().enumerate() {
            assert!(!frames.at_boundary() || i == 0, "boundary inside the frame at byte {i}");
            assert_eq!(frames.step(std::slice::from_ref(byte)), 1);
        }
        assert!(frames.at_boundary());
        assert!(!frames.closed);
    }

    #[test]
    fn sixteen_and_sixty_four_bit_lengths_end_where_they_should() {
        for len in [0, 125, 126, 65535, 65536, 1 << 20] {
            let (f, next) = (frame(0x2, len, false, 0xaa), frame(0x9, 3, false, 0));
            let stream = [f.clone(), next.clone()].concat();
            let mut frames = Frames::new(false);
            // In odd-sized reads, the first frame ends exactly at its last byte.
            let (mut at, mut read) = (0, 0);
            while !frames.at_boundary() || at == 0 {
                let chunk = &stream[read..(read + 1000).min(stream.len())];
                let used = frames.step(chunk);
                at = read + used;
                read = at;
            }
            assert_eq!(at, f.len(), "len {len}");
            frames.feed(&stream[at..]);
            assert!(frames.at_boundary());
        }
    }

    #[test]
    fn step_stops_at_the_frame_end_within_one_read() {
        let stream = [frame(0x1, 5, true, b'a'), frame(0x8, 2, true, 0), frame(0x1, 5, true, b'b')].concat();
        let mut frames = Frames::new(true);
        assert_eq!(frames.step(&stream), 11);
        assert!(frames.at_boundary() && !frames.closed);
        assert_eq!(frames.step(&stream[11..]), 8);
        assert!(frames.at_boundary() && frames.closed, "a whole Close went by");
    }

    #[test]
    fn what_no_peer_accepts_is_broken() {
        let mut unmasked_from_client = Frames::new(true);
        unmasked_from_client.feed(&frame(0x1, 5, false, 0));
        assert!(unmasked_from_client.broken && !unmasked_from_client.at_boundary());

        let mut masked_from_server = Frames::new(false);
        masked_from_server.feed(&frame(0x1, 5, true, 0));
        assert!(masked_from_server.broken);

        let mut long_ping = Frames::new(false);
        long_ping.feed(&frame(0x9, 126, false, 0));
        assert!(long_ping.broken);

        let mut top_bit = Frames::new(false);
        top_bit.feed(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        assert!(top_bit.broken);
    }

    #[test]
    fn close_frames_carry_1001_masked_only_toward_the_app() {
        assert_eq!(close_frame(false), [0x88, 0x02, 0x03, 0xe9]);
        let masked = close_frame(true);
        assert_eq!(masked[..2], [0x88, 0x82]);
        let key = &masked[2..6];
        assert_eq!([masked[6] ^ key[0], masked[7] ^ key[1]], [0x03, 0xe9]);
        let mut frames = Frames::new(true);
        frames.feed(&masked);
        assert!(frames.at_boundary() && frames.closed);
    }

    /// A tunnel over in-memory pipes: (client end, app end, cut trigger, the tunnel).
    fn pipes(
        websocket: bool,
    ) -> (DuplexStream, DuplexStream, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<TunnelEnd>) {
        let (client, client_far) = duplex(64 * 1024);
        let (app, app_far) = duplex(64 * 1024);
        let (cut, fired) = tokio::sync::oneshot::channel();
        let cut_fut = async move {
            let _ = fired.await;
        };
        let tunnel = tokio::spawn(tunnel(client_far, app_far, websocket, cut_fut));
        (client, app, cut, tunnel)
    }

    async fn read_to_end(mut s: DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn cut_mid_frame_finishes_the_frame_then_closes_both_sides() {
        let (mut client, mut app, cut, tunnel) = pipes(true);
        let big = frame(0x2, 200_000, false, 0x5a);
        let after = frame(0x1, 4, false, b'x');
        // Half the frame gets through, then the deadline hits.
        app.write_all(&big[..100_000]).await.unwrap();
        let mut got = vec![0; 100_000];
        client.read_exact(&mut got).await.unwrap();
        cut.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The app finishes its frame and starts another one: only the first arrives.
        app.write_all(&[&big[100_000..], &after[..]].concat()).await.unwrap();
        let mut rest = vec![0; big.len() - 100_000 + 4];
        client.read_exact(&mut rest).await.unwrap();
        let (tail, close) = rest.split_at(big.len() - 100_000);
        assert!([&got[..], tail].concat() == big, "the whole frame, unchanged");
        assert_eq!(close, [0x88, 0x02, 0x03, 0xe9], "a Close 1001 right after the frame");
        // Both peers answer our Close.
        client.write_all(&close_frame(true)).await.unwrap();
        app.write_all(&close_frame(false)).await.unwrap();
        let (to_client, to_app) = (read_to_end(client).await, read_to_end(app).await);
        assert!(to_client.is_empty(), "nothing after the Close: {to_client:?}");
        assert_eq!(to_app.len(), 8, "the app got one masked Close: {to_app:?}");
        assert_eq!([to_app[6] ^ to_app[2], to_app[7] ^ to_app[3]], [0x03, 0xe9]);
        assert!(matches!(tunnel.await.unwrap(), TunnelEnd::Cut { graceful: true }));
    }

    #[tokio::test]
    async fn cut_mid_frame_from_the_client_too() {
        let (mut client, mut app, cut, tunnel) = pipes(true);
        // A header split mid-way, so the cut finds even the header unfinished.
        let big = frame(0x2, 70_000, true, 0x33);
        client.write_all(&big[..5]).await.unwrap();
        let mut got = vec![0; 5];
        app.read_exact(&mut got).await.unwrap();
        cut.send(()).unwrap();
        let mut close = [0; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close, [0x88, 0x02, 0x03, 0xe9], "the idle direction closes at once");
        client.write_all(&[&big[5..], &close_frame(true)[..]].concat()).await.unwrap();
        let mut rest = vec![0; big.len() - 5 + 8];
        app.read_exact(&mut rest).await.unwrap();
        let (tail, masked) = rest.split_at(big.len() - 5);
        assert!([&got[..], tail].concat() == big, "the whole frame, unchanged");
        assert_eq!([masked[0], masked[1], masked[6] ^ masked[2], masked[7] ^ masked[3]], [0x88, 0x82, 0x03, 0xe9]);
        app.write_all(&close_frame(false)).await.unwrap();
        assert!(read_to_end(app).await.is_empty(), "nothing after the Close");
        assert!(matches!(tunnel.await.unwrap(), TunnelEnd::Cut { graceful: true }));
    }

    #[tokio::test]
    async fn a_close_already_sent_is_not_repeated() {
        let (mut client, app, cut, tunnel) = pipes(true);
        // The client started the closing handshake before the deadline.
        client.write_all(&close_frame(true)).await.unwrap();
        let mut app = app;
        let mut seen = [0; 8];
        app.read_exact(&mut seen).await.unwrap();
        cut.send(()).unwrap();
        assert!(read_to_end(app).await.is_empty(), "no second Close toward the app");
        let mut answer = [0; 4];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [0x88, 0x02, 0x03, 0xe9], "the client still gets its reply");
        assert!(matches!(tunnel.await.unwrap(), TunnelEnd::Cut { graceful: true }));
    }

    #[tokio::test]
    async fn other_upgrades_are_just_closed() {
        let (mut client, mut app, cut, tunnel) = pipes(false);
        client.write_all(b"\x00not a websocket").await.unwrap();
        let mut got = [0; 16];
        app.read_exact(&mut got).await.unwrap();
        cut.send(()).unwrap();
        assert!(matches!(tunnel.await.unwrap(), TunnelEnd::Cut { graceful: false }));
        assert!(read_to_end(client).await.is_empty());
        assert!(read_to_end(app).await.is_empty());
    }

    #[tokio::test]
    async fn eof_half_closes_like_copy_bidirectional() {
        let (mut client, mut app, _cut, tunnel) = pipes(true);
        client.shutdown().await.unwrap();
        assert!(read_to_end_ref(&mut app).await.is_empty(), "the app sees the client's EOF");
        // The other direction still works.
        let msg = frame(0x1, 2, false, b'k');
        app.write_all(&msg).await.unwrap();
        let mut got = vec![0; msg.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
        app.shutdown().await.unwrap();
        match tunnel.await.unwrap() {
            TunnelEnd::Closed(Ok((0, n))) => assert_eq!(n, msg.len() as u64),
            other => panic!("{other:?}"),
        }
    }

    async fn read_to_end_ref(s: &mut DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
        out
    }
}

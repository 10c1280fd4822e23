//! An async server on tokio that serves many client processes at once: each gets the same
//! sealed 1 MiB region (one memfd, never copied), then a ring of its own on which the server
//! streams records until it shuts down. Half of the clients are async, half blocking: both
//! kinds of peer interoperate on the same ring protocol.
//!
//! ```text
//! cargo run --features tokio --example tokio_fanout
//! ```
//!
//! Clean shutdown: after a second of streaming the server stops accepting, tells every
//! stream to stop at a record boundary (a `send` future dropped by `select!` sent its record
//! whole or not at all), and drops its producers; each client then reads every record that
//! was published, sees `PeerClosed`, checks that nothing was lost, duplicated or damaged, and
//! exits 0. The server removes its socket and fails unless every client succeeded.
//!
//! The same binary plays both parts: without arguments it is the server, and starts its
//! clients as `tokio_fanout --client PATH async|blocking`.

use std::error::Error;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sealpipe::asyncio::{AsyncChannel, AsyncListener};
use sealpipe::ring::{AsyncConsumer, AsyncProducer};
use sealpipe::ring::{Consumer, RingOptions};
use sealpipe::{Channel, HandshakeConfig, Policy, Region, SealedRegion};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

const CLIENTS: usize = 8;
const REGION_LEN: usize = 1 << 20;
const STREAM_FOR: Duration = Duration::from_secs(1);
const T: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    match args.get(1..).unwrap_or_default() {
        [flag, path, kind] if flag == "--client" => {
            let path = Path::new(path);
            let (region_sum, records) = if kind == "async" {
                runtime()?.block_on(async_client(path))?
            } else {
                // A client with no runtime at all uses the blocking API.
                blocking_client(path)?
            };
            if region_sum != checksum(&pattern()) {
                return Err(format!("{kind} client: region damaged").into());
            }
            let pid = std::process::id();
            println!("{kind} client {pid}: region ok, {records} records in order");
            Ok(())
        }
        _ => runtime()?.block_on(server()),
    }
}

fn config() -> HandshakeConfig {
    // Same-uid peers only (the default policy), 5 s for the handshake.
    HandshakeConfig::new().timeout(Duration::from_secs(5))
}

/// Record `seq`: its number and a few bytes that depend on it.
fn record(seq: u64) -> [u8; 24] {
    let mut r = [0u8; 24];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    r[8..16].copy_from_slice(&seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    r[16..].copy_from_slice(&(!seq).to_le_bytes());
    r
}

/// The region's contents.
fn pattern() -> Vec<u8> {
    (0..REGION_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b))
}

async fn server() -> Result<(), Box<dyn Error>> {
    let path = std::env::temp_dir().join(format!("sealpipe-fanout-{}.sock", std::process::id()));
    let mut listener = AsyncListener::bind(&path, &config())?;
    println!("server: listening at {}", path.display());

    // One region for everyone: written once, sealed, then only its descriptor travels.
    let mut region = Region::new(REGION_LEN)?;
    region.write_at(0, &pattern())?;
    let region = Arc::new(region.seal()?);

    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..CLIENTS {
        let kind = if i % 2 == 0 { "async" } else { "blocking" };
        let path = path.to_str().ok_or("temporary directory is not UTF-8")?;
        children.push(Command::new(&exe).args(["--client", path, kind]).spawn()?);
    }

    let (stop, stopped) = watch::channel(false);
    let mut streams = JoinSet::new();
    for _ in 0..CLIENTS {
        let channel = timeout(T, listener.accept()).await??;
        streams.spawn(serve(channel, region.clone(), stopped.clone()));
    }
    println!("server: listener stats: {}", listener.stats());
    drop(listener); // no more clients: the socket file is removed
    println!("server: {CLIENTS} clients connected; streaming for {STREAM_FOR:?}");

    tokio::time::sleep(STREAM_FOR).await;
    stop.send(true)?;
    while let Some(served) = streams.join_next().await {
        let (pid, sent) = served??;
        println!("server: stopped the stream to pid {pid} after {sent} records");
    }

    let mut failed = 0;
    for mut child in children {
        if !child.wait()?.success() {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} clients failed").into());
    }
    println!("server: every client received every record it was sent, in order");
    Ok(())
}

/// Serves one client: the shared region, then a ring of records until told to stop.
async fn serve(
    channel: AsyncChannel,
    region: Arc<SealedRegion>,
    mut stop: watch::Receiver<bool>,
) -> sealpipe::Result<(u32, u64)> {
    // The handshake recorded the client's kernel-checked credentials.
    let pid = channel.get_ref().peer_credentials().map_or(0, |c| c.pid);
    channel.send(b"region", &[&region]).await?;
    let options = RingOptions::new(1 << 16).timeout(T);
    let mut ring = AsyncProducer::setup(channel.into_inner(), &options).await?;
    let mut seq = 0u64;
    loop {
        let next = record(seq);
        tokio::select! {
            sent = ring.send(&next) => {
                sent?;
                seq += 1;
            }
            _ = stop.changed() => break,
        }
    }
    Ok((pid, seq)) // dropping the producer tells the client the stream is over
}

/// Returns the region's checksum and how many records arrived (all checked).
async fn async_client(path: &Path) -> Result<(u64, u64), Box<dyn Error>> {
    let channel = AsyncChannel::connect(path, &config()).await?;
    let msg = timeout(T, channel.recv(&Policy::immutable())).await??;
    let region_sum = checksum(msg.regions()[0].as_bytes()?);
    let options = RingOptions::default().timeout(T);
    let mut ring = AsyncConsumer::setup(channel.into_inner(), &options).await?;
    let mut records = 0u64;
    let mut buf = Vec::new();
    loop {
        match timeout(T, ring.recv(&mut buf)).await? {
            Ok(()) => {
                check(&buf, records)?;
                records += 1;
            }
            Err(sealpipe::Error::PeerClosed) => return Ok((region_sum, records)),
            Err(e) => return Err(e.into()),
        }
    }
}

fn blocking_client(path: &Path) -> Result<(u64, u64), Box<dyn Error>> {
    let channel = Channel::connect(path, &config())?;
    let msg = channel.recv_timeout(&Policy::immutable(), T)?;
    let region_sum = checksum(msg.regions()[0].as_bytes()?);
    let mut ring = Consumer::setup(channel, &RingOptions::default().timeout(T))?;
    let mut records = 0u64;
    let mut buf = Vec::new();
    loop {
        match ring.recv_timeout(&mut buf, T) {
            Ok(()) => {
                check(&buf, records)?;
                records += 1;
            }
            Err(sealpipe::Error::PeerClosed) => return Ok((region_sum, records)),
            Err(e) => return Err(e.into()),
        }
    }
}

fn check(got: &[u8], seq: u64) -> Result<(), String> {
    if got == record(seq) {
        Ok(())
    } else {
        Err(format!("record {seq} lost, duplicated or damaged"))
    }
}

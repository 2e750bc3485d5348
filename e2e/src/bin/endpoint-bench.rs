//! Load client for the agent's credentials endpoint (used by agent/bench.sh).
//!
//! Phase 1: `--requests` sequential GETs over one keep-alive connection, each timed
//! (latency of a request served from memory, client overhead included).
//! Phase 2: `--concurrency` connections opened at once, each sending one GET at the same moment.
//! Prints one JSON object: {"p50_us", "p99_us", "max_us", "sequential_ok", "concurrent_ok",
//! "concurrent_wall_ms"}.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// host:port of the endpoint.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value = "/v1/credentials/bench")]
    path: String,
    /// File holding the Authorization token.
    #[arg(long)]
    token_file: std::path::PathBuf,
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(sender: &mut Sender, args: &Args, token: &str) -> anyhow::Result<u16> {
    sender.ready().await?;
    let req = Request::get(args.path.as_str())
        .header("Host", args.addr.to_string())
        .header("Authorization", token)
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file).context("token file")?;
    let mut sender = connect(args.addr).await?;
    // Warm up (first request pays for page faults in the agent).
    for _ in 0..100 {
        get(&mut sender, &args, &token).await?;
    }
    let mut lat = Vec::with_capacity(args.requests);
    let mut ok = 0usize;
    for _ in 0..args.requests {
        let t = Instant::now();
        let status = get(&mut sender, &args, &token).await?;
        lat.push(t.elapsed());
        ok += usize::from(status == 200);
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let mut senders = Vec::new();
    for _ in 0..args.concurrency {
        senders.push(connect(args.addr).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut s in senders {
        let (path, addr, token) = (args.path.clone(), args.addr, token.clone());
        tasks.push(tokio::spawn(async move {
            let req = Request::get(path.as_str())
                .header("Host", addr.to_string())
                .header("Authorization", token)
                .body(Empty::<Bytes>::new())?;
            s.ready().await?;
            let resp = tokio::time::timeout(Duration::from_secs(5), s.send_request(req)).await??;
            Ok::<_, anyhow::Error>(resp.status().as_u16())
        }));
    }
    let mut concurrent_ok = 0usize;
    for t in tasks {
        concurrent_ok += usize::from(t.await?? == 200);
    }
    let wall = start.elapsed();
    if ok == 0 {
        bail!("no request succeeded");
    }
    println!(
        "{}",
        serde_json::json!({
            "p50_us": pct(0.50).as_micros() as u64,
            "p99_us": pct(0.99).as_micros() as u64,
            "max_us": lat.last().unwrap().as_micros() as u64,
            "sequential_ok": ok,
            "requests": args.requests,
            "concurrent_ok": concurrent_ok,
            "concurrency": args.concurrency,
            "concurrent_wall_ms": wall.as_secs_f64() * 1000.0,
        })
    );
    Ok(())
}

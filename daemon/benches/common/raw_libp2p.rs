//! The transport baseline under proxymesh: bytes over one `libp2p-stream`
//! stream on libp2p's QUIC transport (libp2p-tls, libp2p-quic's windows),
//! between this process and a child process — the same shape as the raw
//! quinn baseline, so the two side by side show what libp2p's stack costs
//! and a remote get beside them what proxymesh's data path costs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};

const FLAG: &str = "--libp2p-sender";
const PROTOCOL: StreamProtocol = StreamProtocol::new("/proxymesh-bench/bytes/1");

/// If this process was started as the baseline's server, serve (never
/// returns); otherwise return.
pub fn serve_if_asked() {
    if std::env::args().any(|a| a == FLAG) {
        serve();
        std::process::exit(0);
    }
}

fn swarm() -> libp2p::Swarm<libp2p_stream::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

/// Child process: prints its address, then answers each stream's 8-byte
/// size with that many bytes.
fn serve() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut swarm = swarm();
        let mut incoming = swarm.behaviour().new_control().accept(PROTOCOL).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
        let peer = *swarm.local_peer_id();
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                println!("{}", address.with(Protocol::P2p(peer)));
                break;
            }
        }
        tokio::spawn(async move { while swarm.next().await.is_some() {} });
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let mut n = [0u8; 8];
                stream.read_exact(&mut n).await.unwrap();
                let mut left = u64::from_be_bytes(n);
                let chunk = vec![0xA5u8; 1 << 20];
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..k]).await.is_err() {
                        return;
                    }
                    left -= k as u64;
                }
                let _ = stream.close().await;
            });
        }
    });
}

/// A running baseline server, and this process's connection to it.
pub struct Server {
    child: Child,
    peer: PeerId,
    control: libp2p_stream::Control,
}

impl Server {
    /// Start the server (a child process) and connect to it.
    pub async fn start() -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg(FLAG)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr: Multiaddr = line.trim().parse().expect("the server's address");
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            panic!("no peer id in {addr}")
        };
        let mut swarm = swarm();
        let control = swarm.behaviour().new_control();
        swarm.dial(addr).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
                break;
            }
        }
        tokio::spawn(async move { while swarm.next().await.is_some() {} });
        Server {
            child,
            peer,
            control,
        }
    }

    /// Fetch `size` bytes on a new stream; how long it took.
    pub async fn fetch(&mut self, size: u64) -> Duration {
        let t = Instant::now();
        let mut stream = self.control.open_stream(self.peer, PROTOCOL).await.unwrap();
        stream.write_all(&size.to_be_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            match stream.read(&mut buf).await.unwrap() {
                0 => break,
                n => got += n as u64,
            }
        }
        assert_eq!(got, size);
        t.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

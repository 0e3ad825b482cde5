//! The raw-QUIC baseline the benches compare against: a quinn server (a
//! child process) that answers each bidirectional stream's requested byte
//! count with that many bytes, and a client that times one such fetch.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// quinn's congestion controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cc {
    Cubic,
    NewReno,
    Bbr,
}

impl Cc {
    pub fn name(self) -> &'static str {
        match self {
            Cc::Cubic => "cubic",
            Cc::NewReno => "newreno",
            Cc::Bbr => "bbr",
        }
    }

    pub fn parse(s: &str) -> Cc {
        match s {
            "newreno" => Cc::NewReno,
            "bbr" => Cc::Bbr,
            _ => Cc::Cubic,
        }
    }
}

/// Flow-control windows and congestion controller of one baseline.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Per-stream receive window, bytes.
    pub stream: u64,
    /// Connection receive window and send window, bytes.
    pub connection: u64,
    pub cc: Cc,
}

impl Tuning {
    /// What libp2p-quic 0.14 configures (10 MB per stream, 15 MB per
    /// connection; quinn's default 10 MB send window) and quinn's Cubic.
    pub const LIBP2P: Tuning = Tuning {
        stream: 10 * 1024 * 1024,
        connection: 15 * 1024 * 1024,
        cc: Cc::Cubic,
    };

    /// `args` form, for the child process.
    fn to_args(self) -> [String; 3] {
        [
            self.stream.to_string(),
            self.connection.to_string(),
            self.cc.name().to_string(),
        ]
    }

    fn from_args(a: &[String]) -> Tuning {
        Tuning {
            stream: a[0].parse().unwrap(),
            connection: a[1].parse().unwrap(),
            cc: Cc::parse(&a[2]),
        }
    }

    fn transport(self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        let var = |v: u64| quinn::VarInt::from_u64(v).unwrap();
        t.stream_receive_window(var(self.stream))
            .receive_window(var(self.connection));
        // libp2p leaves quinn's default send window (8 × 1.25 MB).
        if self.connection != Tuning::LIBP2P.connection {
            t.send_window(self.connection);
        }
        match self.cc {
            Cc::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Cc::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
            Cc::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
        };
        Arc::new(t)
    }
}

/// The flag that makes a bench binary the baseline's server (see
/// [`serve_if_asked`]).
const FLAG: &str = "--quinn-sender";

/// If this process was started as the baseline's server, serve (never
/// returns); otherwise return.
pub fn serve_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == FLAG) {
        serve(&args[i + 1..]);
        std::process::exit(0);
    }
}

/// Child process: CERT KEY BIND STREAM CONNECTION CC. Prints its port.
fn serve(a: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cert = rustls::pki_types::CertificateDer::from(std::fs::read(&a[0]).unwrap());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(std::fs::read(&a[1]).unwrap().into());
        let bind: SocketAddr = a[2].parse().unwrap();
        let mut cfg = quinn::ServerConfig::with_single_cert(vec![cert], key).unwrap();
        cfg.transport_config(Tuning::from_args(&a[3..]).transport());
        let ep = quinn::Endpoint::server(cfg, bind).unwrap();
        println!("{}", ep.local_addr().unwrap().port());
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let mut n = [0u8; 8];
                    recv.read_exact(&mut n).await.unwrap();
                    let mut left = u64::from_be_bytes(n);
                    let chunk = Bytes::from(vec![0xA5u8; 1 << 20]);
                    while left > 0 {
                        let k = left.min(chunk.len() as u64) as usize;
                        if send.write_chunk(chunk.slice(..k)).await.is_err() {
                            return;
                        }
                        left -= k as u64;
                    }
                    let _ = send.finish();
                }
            });
        }
    });
}

/// A running baseline server and what a client needs to reach it.
pub struct Server {
    child: Child,
    pub port: u16,
    cert: rustls::pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start the server as `wrap` runs this binary (`wrap` is a command
    /// to prefix, e.g. `ip netns exec NS`; empty: none), bound to `bind`.
    pub fn start(wrap: &[&str], bind: &str, tuning: Tuning) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.der"), dir.path().join("key.der"));
        std::fs::write(&cert_path, ck.cert.der()).unwrap();
        std::fs::write(&key_path, ck.key_pair.serialize_der()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match wrap.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg(FLAG)
            .arg(&cert_path)
            .arg(&key_path)
            .arg(bind)
            .args(tuning.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        Server {
            child,
            port: line.trim().parse().expect("the server's port"),
            cert: ck.cert.der().clone(),
            _dir: dir,
        }
    }

    /// Connect to the server at `addr`, with `tuning` on the client side.
    pub async fn connect(&self, addr: SocketAddr, tuning: Tuning) -> quinn::Connection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        cfg.transport_config(tuning.transport());
        let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(cfg);
        ep.connect(addr, "localhost").unwrap().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fetch `size` bytes on a new stream of `conn`; how long it took.
pub async fn fetch(conn: &quinn::Connection, size: u64) -> Duration {
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&size.to_be_bytes()).await.unwrap();
    send.finish().unwrap();
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(1 << 20, true).await.unwrap() {
        got += chunk.bytes.len() as u64;
    }
    assert_eq!(got, size);
    t.elapsed()
}

//! A local `nats-server` for `hub up` and the tests: started with JetStream in a folder of ours
//! when nothing answers at the configured URL, and stopped (SIGTERM) with the hub.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "nats-server is not installed (nothing answers at {url} and `nats-server` is not on the PATH); \
         install it with `sudo apt-get install nats-server` (Debian/Ubuntu), or start one yourself"
    )]
    NotInstalled { url: String },
    #[error("cannot start nats-server: {0}")]
    Spawn(std::io::Error),
    #[error("nats-server did not accept connections on port {port} within {secs} s: {log}")]
    NotReady { port: u16, secs: u64, log: String },
    #[error("NATS URL {0:?} is not of the form nats://host:port")]
    BadUrl(String),
}

/// A nats-server child process.
pub struct LocalNats {
    child: Child,
    pub url: String,
    pub port: u16,
    store: PathBuf,
}

/// The socket address behind a `nats://host:port` URL.
pub fn socket_addr(url: &str) -> Result<SocketAddr, NatsServerError> {
    let rest = url.split("://").last().unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest).trim_end_matches('/');
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:4222")
    };
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| NatsServerError::BadUrl(url.to_owned()))
}

/// Whether something accepts TCP connections at the URL's address.
pub async fn reachable(url: &str) -> bool {
    let Ok(addr) = socket_addr(url) else { return false };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// A port nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

impl LocalNats {
    /// Start `nats-server` on 127.0.0.1:`port` with JetStream storage under `store_dir`.
    pub async fn start(port: u16, store_dir: &Path) -> Result<LocalNats, NatsServerError> {
        let url = format!("nats://127.0.0.1:{port}");
        std::fs::create_dir_all(store_dir).map_err(NatsServerError::Spawn)?;
        let log = store_dir.join("nats-server.log");
        let mut command = Command::new("nats-server");
        // A server this hub started dies with it, even when the hub is killed (SIGKILL): the
        // kernel sends it SIGTERM when the thread that started it exits (the hub starts it from
        // its main thread), so it never lingers for the next start to find.
        // SAFETY: the closure runs in the forked child before exec and makes one system call,
        // prctl, which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a terminal's Ctrl-C goes to the hub's group only, so the
            // server outlives the hub's graceful shutdown (which still needs it) and is then
            // stopped by the hub.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => NatsServerError::NotInstalled { url: url.clone() },
                _ => NatsServerError::Spawn(e),
            })?;
        let started = Instant::now();
        let limit = Duration::from_secs(10);
        while !reachable(&url).await {
            if started.elapsed() > limit || child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let _ = child.start_kill();
                return Err(NatsServerError::NotReady {
                    port,
                    secs: limit.as_secs(),
                    log: log.lines().rev().take(5).collect::<Vec<_>>().join(" | "),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(LocalNats {
            child,
            url,
            port,
            store: store_dir.to_path_buf(),
        })
    }

    /// Stop the server gracefully (SIGTERM, a kill after 5 s) and keep the handle: for an
    /// outage in tests, [`LocalNats::start_again`] brings it back on the same port and store.
    pub async fn halt(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Kill the server with SIGKILL, as a crash would (no flush, no goodbye to clients).
    pub async fn crash(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Start the server again after [`LocalNats::halt`] or [`LocalNats::crash`].
    pub async fn start_again(&mut self) -> Result<(), NatsServerError> {
        *self = LocalNats::start(self.port, &self.store.clone()).await?;
        Ok(())
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stop the server gracefully (SIGTERM), killing it if it does not exit in 5 s.
    pub async fn stop(mut self) {
        self.halt().await;
    }
}

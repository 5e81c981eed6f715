//! A `vmm serve` started by a test: its stderr collected line by line (for the log lines tests
//! wait for, and for failure messages), killed when the test drops it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to say it is listening (a pool of hundreds of VMs included).
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// A running server.
pub struct Server {
    /// The `vmm serve` process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `cmd` (a `vmm serve` on `socket`) and waits for its "listening on" line; panics
    /// with what the server said if it does not come within [`START_LIMIT`].
    pub fn spawn(mut cmd: Command, socket: &Path) -> Server {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start vmm serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut server = Server {
            child,
            socket: socket.to_owned(),
            log,
        };
        let ready = format!("listening on {}", socket.display());
        let started = Instant::now();
        while !server.lines().iter().any(|l| l.starts_with(&ready)) {
            let ended = server.child.try_wait().ok().flatten();
            assert!(
                ended.is_none() && started.elapsed() < START_LIMIT,
                "vmm serve did not say it was listening ({}): {:?}",
                ended.map_or("still running".to_owned(), |s| s.to_string()),
                server.lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// The socket's path as text.
    pub fn socket_str(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// The server's stderr lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until a stderr line contains `text`.
    pub fn wait_for_line(&self, text: &str, limit: Duration) -> bool {
        self.wait_for_lines(text, 1, limit)
    }

    /// Waits (bounded) until `count` stderr lines contain `text`.
    pub fn wait_for_lines(&self, text: &str, count: usize, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.lines().iter().filter(|l| l.contains(text)).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

//! The bench's native peer of the `httpd` image: the same responses (the page at `/`, the JSON
//! echo of `/api/...` with a request counter, 404 otherwise, HTTP/1.1 keep-alive) from a plain
//! Linux process, one thread per connection. `native-httpd ADDR:PORT`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

/// The page at `/`: byte for byte the image's.
const PAGE: &str = "<!doctype html>\n<html><head><title>flick httpd</title></head>\n<body><h1>Hello from a flick microVM</h1>\n<p>This page was served by a unikernel: smoltcp in the guest, a tap on the host.</p></body></html>\n";

static COUNT: AtomicU64 = AtomicU64::new(0);

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0.0.0.0:80".into());
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("native-httpd: cannot listen on {addr}: {err}");
            std::process::exit(1);
        }
    };
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&input[..end]).into_owned();
            input.drain(..end + 4);
            let (response, keep_alive) = respond(&head);
            if stream.write_all(&response).is_err() || !keep_alive {
                return;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
        if input.len() > 8192 {
            return;
        }
    }
}

fn respond(head: &str) -> (Vec<u8>, bool) {
    let mut lines = head.split("\r\n");
    let request: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let [method, path, version] = request[..] else {
        return (
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            false,
        );
    };
    let mut keep_alive = version == "HTTP/1.1";
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("connection")
        {
            keep_alive = !value.trim().eq_ignore_ascii_case("close");
        }
    }
    if method != "GET" {
        return (
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
            false,
        );
    }
    let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    let (status, kind, body) = if path == "/" {
        ("200 OK", "text/html; charset=utf-8", PAGE.to_owned())
    } else if path.starts_with("/api/") || path == "/api" {
        let escaped = path.replace('\\', "\\\\").replace('"', "\\\"");
        (
            "200 OK",
            "application/json",
            format!("{{\"path\":\"{escaped}\",\"count\":{count}}}\n"),
        )
    } else {
        ("404 Not Found", "text/plain", "not found\n".to_owned())
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    (response, keep_alive)
}

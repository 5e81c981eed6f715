//! An HTTP/1.1 server: keep-alive, many connections at once (one event loop), a static page at
//! `/`, and a JSON endpoint `/api/...` that echoes the request path and a request counter.
//!
//! `httpd [--port N] [--requests N] [--backlog N]`: port 80 by default; with `--requests`, it
//! exits 0 once it has answered that many requests; up to `--backlog` connections may be
//! opening or waiting to be served at once (default 128; more are refused).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt::Write;
use kernel::net::{self, NetError, TcpListener, TcpStream};
use kernel::{eprintln, println};

kernel::main!(main);

/// The page at `/`.
const PAGE: &str = "<!doctype html>\n<html><head><title>flick httpd</title></head>\n<body><h1>Hello from a flick microVM</h1>\n<p>This page was served by a unikernel: smoltcp in the guest, a tap on the host.</p></body></html>\n";
/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 256;

struct Options {
    port: u16,
    requests: Option<u64>,
    backlog: usize,
}

fn parse_options(args: kernel::Args) -> Result<Options, &'static str> {
    let mut options = Options {
        port: 80,
        requests: None,
        backlog: kernel::net::tcp::DEFAULT_BACKLOG,
    };
    let mut args = args.skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or("a flag needs a value")?;
        match flag {
            "--port" => options.port = value.parse().map_err(|_| "--port takes 1-65535")?,
            "--requests" => {
                options.requests = Some(value.parse().map_err(|_| "--requests takes a number")?)
            }
            "--backlog" => {
                options.backlog = value.parse().map_err(|_| "--backlog takes a number")?
            }
            _ => return Err("usage: httpd [--port N] [--requests N] [--backlog N]"),
        }
    }
    if options.port == 0 || options.backlog == 0 {
        return Err("--port and --backlog must be above 0");
    }
    Ok(options)
}

fn main(args: kernel::Args) -> i32 {
    let options = match parse_options(args) {
        Ok(options) => options,
        Err(text) => {
            eprintln!("httpd: {text}");
            return 2;
        }
    };
    match serve(&options) {
        Ok(served) => {
            println!("httpd: served {served} requests");
            0
        }
        Err(err) => {
            eprintln!("httpd: {err}");
            1
        }
    }
}

/// One client connection.
struct Connection {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// Close once the output is sent.
    closing: bool,
}

fn serve(options: &Options) -> Result<u64, NetError> {
    let mut listener = TcpListener::bind_with_backlog(options.port, options.backlog)?;
    let config = net::config()?;
    println!("httpd: listening on {}:{}", config.address, options.port);
    let mut connections: Vec<Connection> = Vec::new();
    let mut served = 0u64;
    let done = |served: u64| options.requests.is_some_and(|limit| served >= limit);
    loop {
        let mut progress = false;
        while connections.len() < MAX_CONNECTIONS && !done(served) {
            match listener.try_accept() {
                Ok(stream) => {
                    connections.push(Connection {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        sent: 0,
                        closing: false,
                    });
                    progress = true;
                }
                Err(NetError::WouldBlock) => break,
                Err(err) => return Err(err),
            }
        }
        let mut i = 0;
        while i < connections.len() {
            let (moved, finished) = step(&mut connections[i], &mut served);
            progress |= moved;
            if finished {
                connections.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if done(served) && connections.iter().all(|c| c.sent == c.output.len()) {
            drop(connections);
            net::flush()?;
            return Ok(served);
        }
        if !progress {
            net::wait(None)?;
        }
    }
}

/// Moves one connection on: sends, reads, answers complete requests. Returns (progress,
/// finished).
fn step(conn: &mut Connection, served: &mut u64) -> (bool, bool) {
    let mut progress = false;
    let mut buf = [0u8; 2048];
    loop {
        if conn.input.len() >= MAX_HEAD {
            break;
        }
        match conn.stream.try_read(&mut buf) {
            Ok(0) => {
                // The client ended its half: answer what it sent, then close.
                conn.closing = true;
                break;
            }
            Ok(n) => {
                conn.input.extend_from_slice(&buf[..n]);
                progress = true;
            }
            Err(NetError::WouldBlock) => break,
            Err(_) => return (true, true),
        }
    }
    while let Some(end) = find(&conn.input, b"\r\n\r\n") {
        *served += 1;
        let keep_alive = respond(&conn.input[..end], *served, &mut conn.output);
        conn.input.drain(..end + 4);
        progress = true;
        if !keep_alive {
            conn.closing = true;
            conn.input.clear();
            break;
        }
    }
    if conn.input.len() >= MAX_HEAD {
        error_response(&mut conn.output, "431 Request Header Fields Too Large");
        conn.input.clear();
        conn.closing = true;
    }
    while conn.sent < conn.output.len() {
        match conn.stream.try_write(&conn.output[conn.sent..]) {
            Ok(0) | Err(NetError::WouldBlock) => break,
            Ok(n) => {
                conn.sent += n;
                progress = true;
            }
            Err(_) => return (true, true),
        }
    }
    if conn.sent == conn.output.len() {
        conn.output.clear();
        conn.sent = 0;
        if conn.closing {
            return (true, true);
        }
    }
    (progress, false)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Appends the response to the request `head` to `out`; whether the connection stays open.
fn respond(head: &[u8], count: u64, out: &mut Vec<u8>) -> bool {
    let Ok(head) = core::str::from_utf8(head) else {
        error_response(out, "400 Bad Request");
        return false;
    };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        error_response(out, "400 Bad Request");
        return false;
    };
    let mut keep_alive = version == "HTTP/1.1";
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        error_response(out, "505 HTTP Version Not Supported");
        return false;
    }
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("connection") {
                let value = value.trim();
                if value.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
            if name.trim().eq_ignore_ascii_case("content-length") && value.trim() != "0" {
                // No endpoint takes a body.
                error_response(out, "413 Content Too Large");
                return false;
            }
        }
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        error_response(out, "405 Method Not Allowed");
        return false;
    }
    let mut body = Vec::new();
    let (status, content_type) = if path == "/" {
        body.extend_from_slice(PAGE.as_bytes());
        ("200 OK", "text/html; charset=utf-8")
    } else if path.starts_with("/api/") || path == "/api" {
        body.extend_from_slice(b"{\"path\":\"");
        json_escape(path, &mut body);
        let _ = writeln!(Bytes(&mut body), "\",\"count\":{count}}}");
        ("200 OK", "application/json")
    } else {
        body.extend_from_slice(b"not found\n");
        ("404 Not Found", "text/plain")
    };
    let _ = write!(
        Bytes(out),
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if !head_only {
        out.extend_from_slice(&body);
    }
    keep_alive
}

fn error_response(out: &mut Vec<u8>, status: &str) {
    let _ = write!(
        Bytes(out),
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

fn json_escape(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(Bytes(out), "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// `fmt::Write` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `format!` without its unwinding path (which a debug guest cannot link).
    fn formatted(args: core::fmt::Arguments<'_>) -> alloc::string::String {
        let mut out = alloc::string::String::new();
        let _ = out.write_fmt(args);
        out
    }

    fn answer(head: &str, count: u64) -> (bool, alloc::string::String) {
        let mut out = Vec::new();
        let keep_alive = respond(head.as_bytes(), count, &mut out);
        (keep_alive, alloc::string::String::from_utf8(out).unwrap())
    }

    #[kernel::test]
    fn test_respond_page_keeps_http11_connections_open() {
        let (keep_alive, text) = answer("GET / HTTP/1.1\r\nHost: x", 1);
        assert!(keep_alive);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains(&formatted(format_args!(
            "Content-Length: {}\r\n",
            PAGE.len()
        ))));
        assert!(text.ends_with(PAGE));
    }

    #[kernel::test]
    fn test_respond_closes_on_request_or_http10() {
        assert!(!answer("GET / HTTP/1.1\r\nConnection: close", 1).0);
        assert!(!answer("GET / HTTP/1.0", 1).0);
        assert!(answer("GET / HTTP/1.0\r\nconnection: Keep-Alive", 1).0);
    }

    #[kernel::test]
    fn test_respond_api_echoes_path_escaped_and_count() {
        let (_, text) = answer("GET /api/a\"b\\c HTTP/1.1", 42);
        assert!(text.contains("application/json"));
        assert!(
            text.ends_with("{\"path\":\"/api/a\\\"b\\\\c\",\"count\":42}\n"),
            "{text}"
        );
    }

    #[kernel::test]
    fn test_respond_head_sends_no_body() {
        let (_, text) = answer("HEAD / HTTP/1.1", 1);
        assert!(text.ends_with("\r\n\r\n"));
        assert!(text.contains(&formatted(format_args!("Content-Length: {}", PAGE.len()))));
    }

    #[kernel::test]
    fn test_respond_refuses_bad_requests_and_closes() {
        for (head, status) in [
            ("BREW / HTTP/1.1", "405"),
            ("GET /", "400"),
            ("GET / HTTP/2.0", "505"),
            ("GET / HTTP/1.1 extra", "400"),
            ("POST / HTTP/1.1\r\nContent-Length: 5", "413"),
        ] {
            let (keep_alive, text) = answer(head, 1);
            assert!(!keep_alive, "{head}");
            assert!(
                text.starts_with(&formatted(format_args!("HTTP/1.1 {status}"))),
                "{head}: {text}"
            );
        }
        assert!(
            answer("GET /nothing HTTP/1.1", 1)
                .1
                .starts_with("HTTP/1.1 404")
        );
    }

    #[kernel::test]
    fn test_find_locates_the_end_of_a_head() {
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
        assert_eq!(find(b"ab\r\n", b"\r\n\r\n"), None);
    }
}

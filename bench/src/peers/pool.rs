//! The warm native peer, the fair partner of the `serve` row: `warm-pool`, a gateway holding
//! [`POOL`] pre-started native worker processes on a Unix socket, as a FaaS gateway with warm
//! workers does. Each worker is a fresh process (forked and exec'd ahead of time) that accepts
//! one connection, reads one request in `vmm serve`'s wire format, answers with what the static
//! hello prints as a stdout frame and an exit-status frame, and exits; the gateway starts a
//! replacement once a worker has exited, after its reply, as `vmm serve` refills its pool.
//! Measured by the same in-process client as `serve`: connect and send → exit-status frame.

use super::client::Client;
use super::native::{Payload, compile};
use super::peer::{Peer, Setup};
use super::serve::{POOL, Server};
use crate::error::Result;
use std::path::Path;
use std::process::Command;

/// The peer's name.
pub(crate) const NAME: &str = "native-pool";

/// The gateway and its workers (one program: `--worker` makes a worker).
const WARM_POOL_C: &str = r#"#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define LISTENER 3
#define MAX_REQUEST (1u << 20)
enum { STDOUT_FRAME = 1, EXIT_FRAME = 3, ERROR_FRAME = 4 };

static int read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_frame(int fd, uint8_t kind, const void *payload, uint32_t len) {
    uint8_t head[5] = {kind, len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, len >> 24};
    return write_full(fd, head, sizeof head) || write_full(fd, payload, len) ? -1 : 0;
}

/* One request, then exit: the function is what the static hello does. */
static int worker(void) {
    int conn = accept(LISTENER, NULL, NULL);
    if (conn < 0)
        return 1;
    uint8_t len_bytes[4];
    if (read_full(conn, len_bytes, sizeof len_bytes) != 0)
        return 1;
    uint32_t len = len_bytes[0] | len_bytes[1] << 8 | len_bytes[2] << 16 | (uint32_t)len_bytes[3] << 24;
    char *body = len > 0 && len <= MAX_REQUEST ? malloc(len) : NULL;
    if (body == NULL || read_full(conn, body, len) != 0 || body[0] != '{') {
        static const char bad[] = "bad request";
        send_frame(conn, ERROR_FRAME, bad, sizeof bad - 1);
        return 1;
    }
    static const char out[] = "hello\n";
    int32_t status = 0;
    if (send_frame(conn, STDOUT_FRAME, out, sizeof out - 1) != 0 ||
        send_frame(conn, EXIT_FRAME, &status, sizeof status) != 0)
        return 1;
    close(conn);
    return 0;
}

static void start_worker(pid_t gateway) {
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != gateway)
            _exit(1);
        execl("/proc/self/exe", "warm-pool", "--worker", (char *)NULL);
        _exit(127);
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--worker") == 0)
        return worker();
    if (argc != 3 || atoi(argv[2]) <= 0) {
        fprintf(stderr, "usage: warm-pool SOCKET POOL\n");
        return 2;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof addr.sun_path) {
        fprintf(stderr, "warm-pool: socket path too long\n");
        return 2;
    }
    strcpy(addr.sun_path, argv[1]);
    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (listener < 0 || dup2(listener, LISTENER) < 0) {
        perror("socket");
        return 1;
    }
    if (listener != LISTENER)
        close(listener);
    unlink(argv[1]);
    if (bind(LISTENER, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(LISTENER, 64) != 0) {
        perror(argv[1]);
        return 1;
    }
    pid_t self = getpid();
    for (int i = 0; i < atoi(argv[2]); i++)
        start_worker(self);
    for (;;) {
        int status;
        if (wait(&status) < 0) {
            if (errno == EINTR)
                continue;
            perror("wait");
            return 1;
        }
        start_worker(self); /* refill after a worker has replied and exited */
    }
}
"#;

/// Builds `warm-pool`, starts it on `dir/pool.sock` and sets up the peer.
pub(crate) fn setup(dir: &Path, hello: Payload<'_>) -> Setup {
    match prepare(dir, hello) {
        Ok(peer) => Setup::Ready(peer),
        Err(err) => Setup::failed(NAME, &err),
    }
}

fn prepare(dir: &Path, hello: Payload<'_>) -> Result<Peer> {
    let program = compile(dir, "warm-pool", WARM_POOL_C)?;
    let socket = dir.join("pool.sock");
    let mut cmd = Command::new(&program);
    cmd.arg(&socket).arg(POOL.to_string());
    let server = Server::start(cmd, socket.clone(), &dir.join("pool.log"))?;
    let what = format!(
        "warm request to a pool of {POOL} pre-started native processes (one fresh process per \
         request, refilled after the reply) over a Unix socket in vmm serve's wire format, \
         from the bench itself: connect and send → exit-status frame"
    );
    let mut peer = Peer::new(dir, NAME, what, program, Vec::new(), hello.prints);
    let client = Client::new(&socket, hello.path, &[], Some("hello\n"))?;
    peer.client = Some(client);
    peer.guard = Some(Box::new(server));
    Ok(peer)
}

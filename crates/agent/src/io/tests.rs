//! Unit tests of the stdio streams.

use super::*;
use std::future::pending;
use std::os::unix::fs::OpenOptionsExt;

#[tokio::test]
async fn pipe_round_trip_and_eof() {
    let (parent, child) = create_stdio(false, 0).unwrap();
    let out_w = child.stdout.unwrap();
    nix::unistd::write(&out_w, b"hello").unwrap();
    let reader = parent.stdout.unwrap();
    let data = reader.read(1024, pending()).await.unwrap();
    assert_eq!(data, b"hello");
    drop(out_w);
    assert!(reader.read(1024, pending()).await.unwrap().is_empty());
    assert!(reader.at_eof().await);
}

#[tokio::test]
async fn exited_process_with_lingering_writer_reaches_eof_after_drain() {
    let (parent, child) = create_stdio(false, 0).unwrap();
    let out_w = child.stdout.unwrap();
    nix::unistd::write(&out_w, b"last words").unwrap();
    let reader = parent.stdout.unwrap();
    // The writer is still open (a daemon holds it) but the process has exited.
    let data = reader.read(4, std::future::ready(())).await.unwrap();
    assert_eq!(data, b"last");
    let data = reader.read(100, std::future::ready(())).await.unwrap();
    assert_eq!(data, b" words");
    assert!(reader
        .read(100, std::future::ready(()))
        .await
        .unwrap()
        .is_empty());
    drop(out_w);
}

#[tokio::test]
async fn stdin_writer_delivers_more_than_a_pipe_buffer() {
    let (parent, child) = create_stdio(false, 0).unwrap();
    let stdin_r = child.stdin.unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = nix::unistd::read(stdin_r.as_raw_fd(), &mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let writer = parent.stdin.unwrap();
    writer.write_all(&data).await.unwrap();
    drop(writer);
    drop(parent.stdout);
    assert_eq!(reader.join().unwrap(), expected);
}

#[tokio::test]
async fn copy_to_moves_everything_then_ends() {
    use std::io::Read;
    let (parent, child) = create_stdio(false, 0).unwrap();
    let out_w = child.stdout.unwrap();
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
    let expected = data.clone();
    let writer = std::thread::spawn(move || {
        let mut done = 0;
        while done < data.len() {
            done += nix::unistd::write(&out_w, &data[done..]).unwrap();
        }
        // out_w dropped here: end of stream.
    });
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    // SAFETY: the AsyncFd owns the socket for as long as it is registered.
    let sock = unsafe { AsyncFd::register(OwnedFd::from(ours)) }
        .map_err(|e| e.into_parts().1)
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        got
    });
    let stdout = parent.stdout.unwrap();
    let n = stdout.copy_to(&sock, pending()).await.unwrap();
    assert_eq!(n, expected.len() as u64);
    assert!(stdout.at_eof().await);
    drop(sock);
    writer.join().unwrap();
    assert!(reader.join().unwrap() == expected);
}

#[tokio::test]
async fn copy_to_drains_when_the_peer_is_gone() {
    let (parent, child) = create_stdio(false, 0).unwrap();
    let out_w = child.stdout.unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(theirs);
    ours.set_nonblocking(true).unwrap();
    // SAFETY: the AsyncFd owns the socket for as long as it is registered.
    let sock = unsafe { AsyncFd::register(OwnedFd::from(ours)) }
        .map_err(|e| e.into_parts().1)
        .unwrap();
    // More than a pipe holds: the writer only finishes if the copy keeps draining.
    let writer = std::thread::spawn(move || {
        let chunk = [7u8; 65536];
        for _ in 0..32 {
            nix::unistd::write(&out_w, &chunk).unwrap();
        }
    });
    let stdout = parent.stdout.unwrap();
    stdout.copy_to(&sock, pending()).await.unwrap();
    writer.join().unwrap();
}

#[tokio::test]
async fn pipe_size_is_applied() {
    let (parent, _child) = create_stdio(false, 1 << 20).unwrap();
    let stdout = parent.stdout.unwrap();
    let fd = stdout.fd.get_ref().0.as_raw_fd();
    let size = fcntl(fd, FcntlArg::F_GETPIPE_SZ).unwrap();
    assert_eq!(size, 1 << 20);
}

#[tokio::test]
async fn pty_reads_and_resizes() {
    let (empty, child) = create_stdio(true, 0).unwrap();
    assert!(empty.stdin.is_none() && empty.pty.is_none());
    assert!(child.stdin.is_none() && child.stdout.is_none() && child.stderr.is_none());
    let pty = nix::pty::openpty(None, None).unwrap();
    let parent = attach_console(empty, Some(pty.master)).unwrap();
    let slave = pty.slave;
    nix::unistd::write(&slave, b"tty!").unwrap();
    let data = parent
        .stdout
        .as_ref()
        .unwrap()
        .read(64, pending())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&data).contains("tty!"));
    resize_pty(parent.pty.as_ref().unwrap(), 40, 120).unwrap();
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize through the valid pointer.
    assert_eq!(
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
        0
    );
    assert_eq!((ws.ws_row, ws.ws_col), (40, 120));
    drop(slave);
    assert!(parent
        .stdout
        .unwrap()
        .read(64, pending())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn queued_stdin_is_bounded() {
    let (parent, child) = create_stdio(false, 0).unwrap();
    let writer = parent.stdin.unwrap();
    // Nobody reads: the first write fills the pipe and waits.
    let big = vec![b'x'; MAX_QUEUED_STDIN - 1000];
    let w = writer.clone();
    let pending_write = tokio::spawn(async move { w.write_all(&big).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = writer.write_all(&[b'y'; 2000]).await.unwrap_err();
    assert_eq!(e.code, ttrpc::Code::RESOURCE_EXHAUSTED, "{e}");
    // A cancelled write gives its share back.
    pending_write.abort();
    let _ = pending_write.await;
    assert_eq!(*writer.queued.lock().unwrap(), (0, 0));
    drop(child);
}

/// A terminal process with the slave of its pty open in raw mode (no echo), as the stdio the
/// agent keeps for it, and the slave's path for opening it again.
fn raw_pty() -> (ParentStdio, OwnedFd, std::path::PathBuf) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut name = [0u8; 64];
    // SAFETY: ptsname_r writes a NUL-terminated path of at most `name.len()` bytes.
    let rc =
        unsafe { libc::ptsname_r(pty.master.as_raw_fd(), name.as_mut_ptr().cast(), name.len()) };
    assert_eq!(rc, 0);
    let end = name.iter().position(|&b| b == 0).unwrap();
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&name[..end]).to_string());
    let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    let (empty, _) = create_stdio(true, 0).unwrap();
    let parent = attach_console(empty, Some(pty.master)).unwrap();
    (parent, pty.slave, path)
}

/// Runs `fut` on another worker and gives its result, or None if it has not returned within
/// `limit` (a future that never yields cannot be timed out from inside its own task).
async fn within<T: Send + 'static>(
    limit: Duration,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let task = tokio::spawn(fut);
    let abort = task.abort_handle();
    let out = tokio::time::timeout(limit, task).await;
    abort.abort();
    out.ok().map(|r| r.unwrap())
}

/// Once every holder of a terminal's slave is gone the pty master takes a few KiB and then
/// blocks for good, while tokio keeps reporting its hang-up as readiness: a write into it fails
/// instead of spinning in the agent (the fuzzer's WriteStdin hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_of_a_hung_up_terminal_fails_without_spinning() {
    let (parent, slave, _) = raw_pty();
    drop(slave);
    let writer = parent.stdin.unwrap();
    let res = within(Duration::from_secs(20), async move {
        writer.write_all(&vec![b'x'; 256 << 10]).await
    })
    .await
    .expect("the write into a hung-up terminal returned");
    let e = res.unwrap_err();
    assert_eq!(e.code, ttrpc::Code::INTERNAL, "{e}");
    assert!(e.message.contains("terminal"), "{e}");
}

/// A slave opened again after a hang-up: the master blocks and reads wait as they should (the
/// futures yield, so a deadline ends them), and both work again once the slave side moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_opened_again_after_a_hang_up_waits_without_spinning() {
    let (parent, slave, path) = raw_pty();
    drop(slave);
    // Let the reactor see the hang-up, then open the slave again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .unwrap()
        .into();
    let writer = parent.stdin.clone().unwrap();
    let write = within(Duration::from_secs(20), async move {
        tokio::time::timeout(
            Duration::from_millis(300),
            writer.write_all(&vec![b'x'; 256 << 10]),
        )
        .await
    })
    .await
    .expect("the blocked write yielded to its deadline");
    assert!(
        write.is_err(),
        "the slave reads nothing: the write must wait"
    );

    let reader = parent.stdout.clone().unwrap();
    let read = within(Duration::from_secs(20), async move {
        tokio::time::timeout(Duration::from_millis(300), reader.read(64, pending())).await
    })
    .await
    .expect("the empty read yielded to its deadline");
    assert!(read.is_err(), "nothing was written: the read must wait");

    nix::unistd::write(&slave, b"back").unwrap();
    let reader = parent.stdout.clone().unwrap();
    let data = within(Duration::from_secs(20), async move {
        reader.read(64, pending()).await
    })
    .await
    .expect("the read returned")
    .unwrap();
    assert_eq!(data, b"back");
}

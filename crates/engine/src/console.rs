//! The terminal of a container process, as runc's console socket does it: the pty is opened
//! *inside* the container (its `/dev/ptmx`, so its own devpts instance), the container process
//! keeps the slave as its stdio and hands the master back to the engine over a socket pair with
//! `SCM_RIGHTS`. `tty`, `ttyname(3)` and everything built on them then name the container's
//! `/dev/pts/N`, and the engine's own devpts never holds a container's pty.
//!
//! The master is sent before the container process reports ready, so by the time the engine
//! reads "ready" the descriptor is already queued on its end: the receipt never waits on the
//! container, and a setup process that dies closes the socket instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// Environment variable naming the console socket fd of the setup process (absent: none).
pub(crate) const CONSOLE_FD_ENV: &str = "_ENGINE_CONSOLE_FD";
/// The fd number the console socket gets in the setup process.
pub(crate) const CONSOLE_FD: i32 = 4;

/// A `SOCK_SEQPACKET` pair (close-on-exec): the engine's end, the setup process's end.
pub(crate) fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends `fd` as the one descriptor of a one-byte message.
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let iov = [io::IoSlice::new(b"M")];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives the pty master sent by [`send_fd`], waiting at most `timeout`. The descriptor is
/// close-on-exec and must be a pty master; anything else (no descriptor, several, a truncated
/// message, another kind of file) is an error and whatever arrived is closed.
pub(crate) fn recv_master(sock: BorrowedFd<'_>, timeout: Duration) -> io::Result<OwnedFd> {
    let mut pfd = [nix::poll::PollFd::new(sock, nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    loop {
        match nix::poll::poll(&mut pfd, ms) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the container process did not hand over its terminal",
                ))
            }
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(list) = c {
            // SAFETY: the kernel installed these descriptors for us; nothing else owns them.
            fds.extend(
                list.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let bytes = msg.bytes;
    if truncated || bytes != 1 || fds.len() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            if bytes == 0 && fds.is_empty() {
                "the container process exited before handing over its terminal".to_string()
            } else {
                format!(
                    "the terminal hand-over carried {} descriptors{}",
                    fds.len(),
                    if truncated { " (truncated)" } else { "" }
                )
            },
        ));
    }
    let master = fds.pop().expect("one descriptor");
    pty_number(master.as_fd()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the descriptor handed over as the terminal is not a pty master",
        )
    })?;
    Ok(master)
}

/// The index N of a pty master (its slave is `pts/N` of the master's devpts).
pub(crate) fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// Sets the window size of a pty (rows, columns; values beyond `u16` are clamped).
pub(crate) fn set_window_size(fd: BorrowedFd<'_>, rows: u64, cols: u64) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows.min(u64::from(u16::MAX)) as u16,
        ws_col: cols.min(u64::from(u16::MAX)) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct from the valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new pty from the `/dev/ptmx` of the current root (resolved inside it, no magic links):
/// the master (non-blocking, close-on-exec) and the slave (close-on-exec, not the controlling
/// terminal yet).
pub(crate) fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let root = crate::fsutil::openat2(
        libc::AT_FDCWD,
        Path::new("/"),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        0,
    )?;
    let master = crate::fsutil::open_in_root(
        root.as_raw_fd(),
        Path::new("/dev/ptmx"),
        libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK,
        0,
    )
    .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/ptmx: {e}")))?;
    // Only a pty master answers TIOCGPTN: a /dev/ptmx that is something else is refused here.
    let n = pty_number(master.as_fd()).map_err(|e| {
        io::Error::new(e.kind(), format!("/dev/ptmx is not a pty multiplexer: {e}"))
    })?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot unlock the pty: {e}"),
        ));
    }
    // The peer of the master, without a path lookup (Linux 4.13+); else /dev/pts/N.
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = if peer >= 0 {
        // SAFETY: the kernel just returned this descriptor.
        unsafe { OwnedFd::from_raw_fd(peer) }
    } else {
        crate::fsutil::open_in_root(
            root.as_raw_fd(),
            Path::new(&format!("/dev/pts/{n}")),
            libc::O_RDWR | libc::O_NOCTTY,
            0,
        )
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/pts/{n}: {e}")))?
    };
    Ok((master, slave))
}

/// Child side, in the container process once its root (and devpts) is in place: opens a pty
/// from the container's `/dev/ptmx`, sets the initial window size, makes the slave fds 0-2 and
/// sends the master over `sock`. The master is closed here afterwards: the container keeps only
/// the slave.
pub(crate) fn attach_in_child(sock: OwnedFd, size: Option<(u64, u64)>) -> io::Result<()> {
    let (master, slave) = open_pty()?;
    if let Some((rows, cols)) = size {
        set_window_size(master.as_fd(), rows, cols)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot set the console size: {e}")))?;
    }
    for fd in 0..3 {
        // SAFETY: dup2 onto a standard fd; the slave stays open until the end of this function.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot make the terminal fd {fd}: {e}"),
            ));
        }
    }
    send_fd(sock.as_fd(), master.as_fd()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot hand the terminal to the engine: {e}"),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_round_trip_and_refusals() {
        let (ours, theirs) = socket_pair().unwrap();
        let (master, _slave) = open_pty().unwrap();
        send_fd(theirs.as_fd(), master.as_fd()).unwrap();
        let got = recv_master(ours.as_fd(), Duration::from_secs(5)).unwrap();
        assert_eq!(
            pty_number(got.as_fd()).unwrap(),
            pty_number(master.as_fd()).unwrap()
        );
        let flags = nix::fcntl::fcntl(got.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "the master must be close-on-exec"
        );

        // Not a pty master.
        let null = std::fs::File::open("/dev/null").unwrap();
        send_fd(theirs.as_fd(), null.as_fd()).unwrap();
        assert!(recv_master(ours.as_fd(), Duration::from_secs(5)).is_err());

        // Nothing sent: bounded wait, then the peer's exit.
        assert_eq!(
            recv_master(ours.as_fd(), Duration::from_millis(50))
                .unwrap_err()
                .kind(),
            io::ErrorKind::TimedOut
        );
        drop(theirs);
        assert!(recv_master(ours.as_fd(), Duration::from_secs(5)).is_err());
    }

    #[test]
    fn window_size() {
        let (master, slave) = open_pty().unwrap();
        set_window_size(master.as_fd(), 12, 345).unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize through the valid pointer.
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
            0
        );
        assert_eq!((ws.ws_row, ws.ws_col), (12, 345));
    }
}

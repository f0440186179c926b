//! Starting the setup process with `posix_spawn` (glibc: `clone(CLONE_VM | CLONE_VFORK)`).
//!
//! A `fork` of the agent copies its page tables and write-protects all of its memory, so every
//! page any agent thread writes afterwards takes a copy-on-write fault; with the set-up child
//! re-executing at once none of that copy is ever used. `posix_spawn` runs the child on the
//! parent's memory until it execs, and its file actions place the descriptors (what the
//! `pre_exec` closure of `std::process::Command` did, which forces `fork`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(s: &[u8]) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Owns a `posix_spawn_file_actions_t` and a `posix_spawnattr_t`.
struct Spawn {
    actions: libc::posix_spawn_file_actions_t,
    attr: libc::posix_spawnattr_t,
}

impl Drop for Spawn {
    fn drop(&mut self) {
        // SAFETY: both were initialized in `new` and are destroyed once.
        unsafe {
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
            libc::posix_spawnattr_destroy(&mut self.attr);
        }
    }
}

/// Starts `path` with `args` (argv[0] is `path`) and exactly `env`; `fds` lists, for each
/// descriptor number the child gets, the descriptor it is a copy of. Nothing else is inherited
/// (every other agent descriptor is close-on-exec). The child starts with no blocked signals and
/// every signal at its default action. Returns the child's pid.
pub(super) fn spawn(
    path: &Path,
    args: &[String],
    env: &[(&str, String)],
    fds: &[(RawFd, RawFd)],
) -> std::io::Result<libc::pid_t> {
    let path_c = cstr(path.as_os_str().as_bytes())?;
    let mut argv_c = vec![path_c.clone()];
    for a in args {
        argv_c.push(cstr(a.as_bytes())?);
    }
    let env_c = env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut argv: Vec<*mut libc::c_char> = argv_c.iter().map(|c| c.as_ptr() as *mut _).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = env_c.iter().map(|c| c.as_ptr() as *mut _).collect();
    envp.push(std::ptr::null_mut());

    // A source could sit on a target number that an earlier action overwrites: move every
    // source above the targets first (close-on-exec copies, closed when this returns).
    let mut high: Vec<OwnedFd> = Vec::with_capacity(fds.len());
    for (src, _) in fds {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller keeps open for this call.
        let fd = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 10) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        high.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }

    // SAFETY: zeroed storage initialized by the *_init calls before any other use; `Spawn`
    // destroys them.
    let mut s = unsafe {
        let mut s = Spawn {
            actions: std::mem::zeroed(),
            attr: std::mem::zeroed(),
        };
        check(libc::posix_spawn_file_actions_init(&mut s.actions))?;
        if let Err(e) = check(libc::posix_spawnattr_init(&mut s.attr)) {
            libc::posix_spawn_file_actions_destroy(&mut s.actions);
            return Err(e);
        }
        s
    };
    // SAFETY: the calls only read the values passed and write the initialized structures.
    unsafe {
        for (copy, (_, target)) in high.iter().zip(fds) {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut s.actions,
                copy.as_raw_fd(),
                *target,
            ))?;
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        check(libc::posix_spawnattr_setsigmask(&mut s.attr, &none))?;
        check(libc::posix_spawnattr_setsigdefault(&mut s.attr, &all))?;
        check(libc::posix_spawnattr_setflags(
            &mut s.attr,
            (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
        ))?;
    }
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call (the CStrings and vectors outlive it); argv and
    // envp are null-terminated.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            path_c.as_ptr(),
            &s.actions,
            &s.attr,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    drop(s);
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn places_descriptors_and_environment() {
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r3, w3) = nix::unistd::pipe().unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let pid = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), "echo \"$X\" >&1; echo three >&3".into()],
            &[("X", "hello".into())],
            &[
                (devnull.as_raw_fd(), 0),
                (w.as_raw_fd(), 1),
                (w.as_raw_fd(), 2),
                (w3.as_raw_fd(), 3),
            ],
        )
        .unwrap();
        drop(w);
        drop(w3);
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        let mut three = String::new();
        std::fs::File::from(r3).read_to_string(&mut three).unwrap();
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(out, "hello\n");
        assert_eq!(three, "three\n");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn missing_program_is_an_error() {
        assert!(spawn(Path::new("/nonexistent/x"), &[], &[], &[]).is_err());
    }
}

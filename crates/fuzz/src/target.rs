//! The agent under test, confined so that fuzzed requests cannot change this machine.
//!
//! The agent runs standalone on a unix socket, in its own mount, network, UTS and IPC namespaces
//! (so mounts, interfaces, routes, iptables rules and the host name stay private; `/run` is a
//! private tmpfs), with a scratch sysfs for CPU and memory hot-plug (`KATA_AGENT_SYSFS`), and
//! under a seccomp filter that answers `EPERM` to the calls no namespace contains: setting the
//! clock, swapon/swapoff, loading or removing kernel modules, reboot and kexec. The filter is
//! inherited by what the agent runs (`modprobe`, `iptables`), so their final system call is
//! stubbed too. Container cgroups are real (cgroupfs has no private view here); the campaign
//! removes its containers before it measures.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// System calls answered `EPERM` inside the target.
const DENIED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
];

/// A running, confined agent.
pub struct Target {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// Resource figures of the agent process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub fds: usize,
    pub threads: usize,
    pub mounts: usize,
    pub rss_kib: u64,
}

impl Target {
    /// Starts `agent` with its state in a fresh directory below `work`.
    pub fn start(agent: &Path, work: &Path, extra_env: &[(String, String)]) -> Result<Target> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = work.join(format!("kata-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let sysfs = dir.join("sysfs");
        make_scratch_sysfs(&sysfs)?;
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.53\n")?;
        std::fs::write(dir.join("cmdline"), "")?;
        let socket = dir.join("agent.sock");
        let log = dir.join("agent.log");

        let mut cmd = Command::new(agent);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "KATA_AGENT_SERVER_ADDR",
                format!("unix://{}", socket.display()),
            )
            .env("KATA_AGENT_RUN_DIR", dir.join("run"))
            .env("KATA_AGENT_SANDBOX_NS_DIR", dir.join("ns"))
            .env("KATA_AGENT_RESOLV_CONF", dir.join("resolv.conf"))
            .env("KATA_AGENT_CMDLINE", dir.join("cmdline"))
            .env("KATA_AGENT_POLICY_LOG", dir.join("policy.jsonl"))
            .env("KATA_AGENT_SYSFS", &sysfs)
            .env(
                "KATA_AGENT_LOG_LEVEL",
                std::env::var("KATA_FUZZ_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let confine = Confinement::new()?;
        // SAFETY: between fork and exec the closure makes only async-signal-safe system calls on
        // data prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || confine.apply());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", agent.display()))?;
        let mut t = Target {
            child: Some(child),
            dir,
            socket,
            log,
        };
        t.wait_ready()?;
        Ok(t)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.try_exit() {
                bail!(
                    "the agent exited during start-up ({status}):\n{}",
                    self.log_text()
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not listen within 20 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// The exit status, if the agent has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panic messages the agent logged (a panic caught by the runtime still counts).
    pub fn panics(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_string)
            .collect()
    }

    pub fn resources(&self) -> Result<Resources> {
        let pid = self.pid();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .context("the agent's fd directory")?
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?
            .lines()
            .count();
        Ok(Resources {
            fds,
            threads: field("Threads:") as usize,
            mounts,
            rss_kib: field("VmRSS:"),
        })
    }

    /// What each of the agent's threads is doing (`name: state wchan`), for a hang's report: a
    /// thread asleep in the kernel names the wait it is in.
    pub fn thread_states(pid: i32) -> String {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return String::new();
        };
        let mut out = Vec::new();
        for t in tasks.flatten() {
            let dir = t.path();
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            let state = read("stat")
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
                .unwrap_or_default();
            let syscall = read("syscall")
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            out.push(format!(
                "{}: {state} {} (syscall {syscall})",
                read("comm"),
                read("wchan")
            ));
        }
        out.sort();
        out.join("; ")
    }

    /// SIGTERM, then the exit status (SIGKILL after 20 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
        // KATA_FUZZ_KEEP=1 keeps the agent's directory (its log) for a look afterwards.
        if std::env::var_os("KATA_FUZZ_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What the child does between fork and exec, prepared beforehand.
struct Confinement {
    root: CString,
    run: CString,
    tmpfs: CString,
    filter: Vec<libc::sock_filter>,
}

impl Confinement {
    fn new() -> Result<Confinement> {
        Ok(Confinement {
            root: CString::new("/")?,
            run: CString::new("/run")?,
            tmpfs: CString::new("tmpfs")?,
            filter: seccomp_filter(),
        })
    }

    fn apply(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain system calls on NUL-terminated strings and a filter owned by `self`.
        unsafe {
            check(libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
            ))?;
            check(libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                self.tmpfs.as_ptr(),
                self.run.as_ptr(),
                self.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            ))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            let prog = libc::sock_fprog {
                len: self.filter.len() as u16,
                filter: self.filter.as_ptr() as *mut libc::sock_filter,
            };
            check(libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
                0,
                0,
            ))?;
        }
        Ok(())
    }
}

/// A classic BPF program: `EPERM` for [`DENIED_SYSCALLS`] on x86-64, everything else allowed.
fn seccomp_filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k, jt, jf| libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    };
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let n = DENIED_SYSCALLS.len() as u8;
    let mut f = vec![
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
    ];
    for (i, nr) in DENIED_SYSCALLS.iter().enumerate() {
        // On a match jump to the EPERM return after the list, else test the next one.
        f.push(jump(*nr as u32, n - i as u8, 0));
    }
    f.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    f.push(stmt(
        RET_K,
        libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
    ));
    f
}

/// A sysfs stand-in with four CPUs and hot-pluggable memory, for OnlineCPUMem and
/// MemHotplugByProbe.
fn make_scratch_sysfs(root: &Path) -> Result<()> {
    let cpu = root.join("devices/system/cpu");
    for n in 0..4 {
        std::fs::create_dir_all(cpu.join(format!("cpu{n}")))?;
        if n > 0 {
            std::fs::write(cpu.join(format!("cpu{n}/online")), "1\n")?;
        }
    }
    std::fs::write(cpu.join("online"), "0-3\n")?;
    let mem = root.join("devices/system/memory");
    for n in 0..2 {
        std::fs::create_dir_all(mem.join(format!("memory{n}")))?;
        std::fs::write(mem.join(format!("memory{n}/online")), "1\n")?;
    }
    std::fs::write(mem.join("probe"), "")?;
    std::fs::write(mem.join("block_size_bytes"), "8000000\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_shape() {
        let f = seccomp_filter();
        assert_eq!(f.len(), 4 + DENIED_SYSCALLS.len() + 2);
        // Every match jumps exactly to the last instruction (the EPERM return).
        for (i, ins) in f[4..4 + DENIED_SYSCALLS.len()].iter().enumerate() {
            let at = 4 + i;
            assert_eq!(at + 1 + ins.jt as usize, f.len() - 1);
        }
    }
}

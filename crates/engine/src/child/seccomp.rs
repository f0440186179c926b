//! OCI seccomp profile → libseccomp filter.

use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction as A, LinuxSeccompFilterFlag as F, LinuxSeccompOperator as Op,
};

/// The errno used when a profile gives none (`errnoRet` absent).
const DEFAULT_ERRNO: i32 = libc::EPERM;

fn action(a: A, errno: Option<u32>) -> Result<ScmpAction> {
    let errno = errno.map(|e| e as i32).unwrap_or(DEFAULT_ERRNO);
    Ok(match a {
        A::ScmpActKill | A::ScmpActKillThread => ScmpAction::KillThread,
        A::ScmpActKillProcess => ScmpAction::KillProcess,
        A::ScmpActTrap => ScmpAction::Trap,
        A::ScmpActErrno => ScmpAction::Errno(errno),
        A::ScmpActTrace => ScmpAction::Trace(errno as u16),
        A::ScmpActLog => ScmpAction::Log,
        A::ScmpActAllow => ScmpAction::Allow,
        A::ScmpActNotify => bail!("the seccomp action SCMP_ACT_NOTIFY is not supported"),
    })
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Builds (but does not load) the filter of a profile.
pub fn build(profile: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).context("cannot create a seccomp filter")?;
    // no_new_privs is the engine's business (set or not from the process spec).
    ctx.set_ctl_nnp(false)?;
    for arch in profile.architectures().iter().flatten() {
        let name = enum_name(arch);
        let a = ScmpArch::from_str(&name)
            .map_err(|_| anyhow!("the seccomp architecture {name} is not supported"))?;
        if !ctx.is_arch_present(a).unwrap_or(false) {
            ctx.add_arch(a)
                .with_context(|| format!("cannot add the seccomp architecture {name}"))?;
        }
    }
    for flag in profile.flags().iter().flatten() {
        match flag {
            F::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true)?,
            F::SeccompFilterFlagLog => ctx.set_ctl_log(true)?,
            F::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true)?,
        };
    }
    for rule in profile.syscalls().iter().flatten() {
        if rule.names().is_empty() {
            bail!("a seccomp rule has no syscall names");
        }
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let mut cmps = Vec::new();
        for a in rule.args().iter().flatten() {
            let op = match a.op() {
                Op::ScmpCmpNe => ScmpCompareOp::NotEqual,
                Op::ScmpCmpLt => ScmpCompareOp::Less,
                Op::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                Op::ScmpCmpEq => ScmpCompareOp::Equal,
                Op::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                Op::ScmpCmpGt => ScmpCompareOp::Greater,
                Op::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
            };
            let datum = match a.op() {
                Op::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
                _ => a.value(),
            };
            cmps.push(ScmpArgCompare::new(a.index() as u32, op, datum));
        }
        for name in rule.names() {
            // Names unknown to libseccomp (newer or other-arch syscalls) are skipped.
            let Ok(sys) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let res = if cmps.is_empty() {
                ctx.add_rule(act, sys)
            } else {
                ctx.add_rule_conditional(act, sys, &cmps)
            };
            if res.is_err() && cmps.len() > 1 {
                // libseccomp refuses several comparisons of one argument in one
                // rule; such profiles mean "any of them", i.e. one rule each.
                for c in &cmps {
                    ctx.add_rule_conditional(act, sys, std::slice::from_ref(c))
                        .with_context(|| format!("cannot add the seccomp rule for {name}"))?;
                }
            } else {
                res.with_context(|| format!("cannot add the seccomp rule for {name}"))?;
            }
        }
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompBuilder, LinuxSyscallBuilder};

    #[test]
    fn builds_a_profile() {
        let p = LinuxSeccompBuilder::default()
            .default_action(A::ScmpActAllow)
            .architectures(vec![
                oci_spec::runtime::Arch::ScmpArchX86_64,
                oci_spec::runtime::Arch::ScmpArchX86,
            ])
            .syscalls(vec![
                LinuxSyscallBuilder::default()
                    .names(vec!["mkdir".to_string(), "no_such_syscall".to_string()])
                    .action(A::ScmpActErrno)
                    .build()
                    .unwrap(),
                LinuxSyscallBuilder::default()
                    .names(vec!["getpid".to_string()])
                    .action(A::ScmpActAllow)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        build(&p).unwrap();
        assert_eq!(
            action(A::ScmpActErrno, None).unwrap(),
            ScmpAction::Errno(libc::EPERM)
        );
        assert_eq!(
            action(A::ScmpActErrno, Some(5)).unwrap(),
            ScmpAction::Errno(5)
        );
        assert!(action(A::ScmpActNotify, None).is_err());
    }
}

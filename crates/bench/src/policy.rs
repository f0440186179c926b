//! Agent policy figures (`--policy`): what a Rego policy costs the agent.
//!
//! * start-up: spawn to the first answered `Check`, without a policy and with genpolicy's
//!   `rules.rego` plus a genpolicy-shaped `policy_data` (tests/data/policy/) as the start-up policy;
//! * SetPolicy of that policy (parse and analysis of ~70 KB of Rego);
//! * the added latency of one decision: two agents side by side, one without a policy and one
//!   with rules.rego + policy_data, the same requests sent to both in turn; the difference of the
//!   medians is what the decision adds. CopyFile exercises the rules' path regexes over
//!   `policy_data`; GuestDetails a rule decided by its default.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::CheckRequest;
use protocols::health_ttrpc::HealthClient;

use crate::agent::AgentProc;
use crate::ops::{ctx, print_latency, summarize};
use crate::Options;

fn data(name: &str) -> Result<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/policy")
        .join(name);
    std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
}

/// rules.rego with the test policy_data, its shared-file prefix set to `cpath`.
fn genpolicy_policy(cpath: &Path) -> Result<String> {
    Ok(format!(
        "{}\n{}",
        data("rules.rego")?,
        data("policy-data.rego")?.replace("@CPATH@", &cpath.display().to_string())
    ))
}

async fn first_check(a: &AgentProc) -> Result<Duration> {
    let t0 = Instant::now();
    let h = HealthClient::new(a.connect().await?);
    h.check(ctx(), &CheckRequest::new())
        .await
        .context("Check")?;
    Ok(t0.elapsed())
}

async fn startup(o: &Options, policy_file: Option<&Path>) -> Result<Vec<Duration>> {
    let mut v = Vec::new();
    for i in 0..o.iterations.clamp(3, 10) {
        // The agent inherits this process' environment.
        match policy_file {
            Some(p) => std::env::set_var("KATA_AGENT_POLICY_FILE", p),
            None => std::env::remove_var("KATA_AGENT_POLICY_FILE"),
        }
        let t0 = Instant::now();
        let a = AgentProc::spawn(&o.agent, &format!("policy-start-{i}"))?;
        std::env::remove_var("KATA_AGENT_POLICY_FILE");
        first_check(&a).await?;
        v.push(t0.elapsed());
    }
    Ok(v)
}

async fn copy_file(c: &AgentServiceClient, path: &Path) -> Result<Duration> {
    let mut req = agent::CopyFileRequest::new();
    req.path = path.display().to_string();
    req.file_mode = libc::S_IFREG | 0o644;
    req.dir_mode = libc::S_IFDIR | 0o755;
    req.data = b"kata-bench\n".to_vec();
    req.file_size = req.data.len() as i64;
    let t0 = Instant::now();
    c.copy_file(ctx(), &req).await.context("CopyFile")?;
    Ok(t0.elapsed())
}

async fn guest_details(c: &AgentServiceClient) -> Result<Duration> {
    let t0 = Instant::now();
    c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .await
        .context("GetGuestDetails")?;
    Ok(t0.elapsed())
}

fn print_added(name: &str, without: Vec<Duration>, with: Vec<Duration>) {
    let base = summarize(without.clone()).median;
    let policy = summarize(with.clone()).median;
    print_latency(&format!("{name}, no policy"), without);
    print_latency(&format!("{name}, rules.rego + policy_data"), with);
    println!(
        "{:<40} {:>9.1} us (difference of the medians)",
        format!("  {name}: added by the decision"),
        (policy.as_secs_f64() - base.as_secs_f64()) * 1e6
    );
}

/// Prints the policy figures.
pub async fn bench_policy(o: &Options) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("kata-bench-policy-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let file: PathBuf = scratch.join("genpolicy.rego");
    std::fs::write(
        &file,
        genpolicy_policy(Path::new("/run/kata-containers/shared/containers"))?,
    )?;
    println!(
        "{:<40} {} KiB of Rego (rules.rego + policy_data)",
        "policy size",
        std::fs::metadata(&file)?.len() / 1024
    );
    print_latency("start-up, no policy", startup(o, None).await?);
    print_latency(
        "start-up, rules.rego + policy_data",
        startup(o, Some(&file)).await?,
    );

    // SetPolicy: parse and prepare the policy (allow-all agents, so it can be repeated).
    let a = AgentProc::spawn(&o.agent, "policy-set")?;
    let c = AgentServiceClient::new(a.connect().await?);
    // rules.rego locks SetPolicy; for repeated timing this copy lets it through.
    let text = format!(
        "{}\nSetPolicyRequest := true\n",
        genpolicy_policy(&a.dir.join("run/shared/containers"))?
    );
    let mut set = Vec::new();
    for _ in 0..o.iterations.clamp(3, 20) {
        let mut req = agent::SetPolicyRequest::new();
        req.policy = text.clone();
        let t0 = Instant::now();
        c.set_policy(ctx(), &req).await.context("SetPolicy")?;
        set.push(t0.elapsed());
    }
    print_latency("SetPolicy rules.rego + policy_data", set);
    drop(c);
    drop(a);

    // Decisions: the same requests to an agent without a policy and to one with the policy.
    let plain = AgentProc::spawn(&o.agent, "policy-none")?;
    let gated = AgentProc::spawn(&o.agent, "policy-rules")?;
    let cp = AgentServiceClient::new(plain.connect().await?);
    let cg = AgentServiceClient::new(gated.connect().await?);
    let mut req = agent::SetPolicyRequest::new();
    req.policy = genpolicy_policy(&gated.dir.join("run/shared/containers"))?;
    cg.set_policy(ctx(), &req).await.context("SetPolicy")?;
    let bundle = "b".repeat(64);
    let name = format!("{bundle}-0123456789abcdef-hostname");
    let plain_file = plain.dir.join("run/shared/containers").join(&name);
    let gated_file = gated.dir.join("run/shared/containers").join(&name);
    let n = (o.iterations * 100).max(1000);
    // Warm-up (connections, first writes, caches).
    for _ in 0..50 {
        copy_file(&cp, &plain_file).await?;
        copy_file(&cg, &gated_file).await?;
        guest_details(&cp).await?;
        guest_details(&cg).await?;
    }
    let (mut cf0, mut cf1, mut gd0, mut gd1) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        // Alternate which agent goes first so that neither always follows the other.
        if i % 2 == 0 {
            cf0.push(copy_file(&cp, &plain_file).await?);
            cf1.push(copy_file(&cg, &gated_file).await?);
            gd0.push(guest_details(&cp).await?);
            gd1.push(guest_details(&cg).await?);
        } else {
            cf1.push(copy_file(&cg, &gated_file).await?);
            cf0.push(copy_file(&cp, &plain_file).await?);
            gd1.push(guest_details(&cg).await?);
            gd0.push(guest_details(&cp).await?);
        }
    }
    print_added("CopyFile", cf0, cf1);
    print_added("GetGuestDetails", gd0, gd1);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

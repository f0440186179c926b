use super::*;

#[test]
fn self_stat_with_odd_command_name() {
    let text = "1234 (my (agent) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                7 3 2 1 20 0 5 0 100 123456789 321 18446744073709551615 \
                1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
    let s = parse_self_stat(text).unwrap();
    assert_eq!(
        s,
        SelfStat {
            utime: 7,
            stime: 3,
            cutime: 2,
            cstime: 1,
            num_threads: 5,
            vsize: 123456789,
            rss: 321,
        }
    );
    assert_eq!(parse_self_stat("garbage"), None);
}

#[test]
fn meminfo_units() {
    let m =
        parse_meminfo("MemTotal:       16384 kB\nHugePages_Total:       4\nActive(anon):  2 kB\n");
    assert_eq!(m["MemTotal"], 16384.0 * 1024.0);
    assert_eq!(m["HugePages_Total"], 4.0);
    assert_eq!(m["Active(anon)"], 2048.0);
    assert_eq!(MEMINFO_ITEMS.len(), 58);
}

#[test]
fn status_values_stay_in_kb() {
    let m = parse_status("Name:\tkata-agent\nVmRSS:\t  1234 kB\nvoluntary_ctxt_switches:\t9\n");
    assert_eq!(m["VmRSS"], 1234.0);
    assert_eq!(m["voluntary_ctxt_switches"], 9.0);
    assert!(!m.contains_key("Name"));
}

#[test]
fn loadavg_and_cpus() {
    assert_eq!(
        parse_loadavg("0.50 0.25 0.10 3/456 7890\n"),
        Some((0.5, 0.25, 0.1, 3.0, 456.0))
    );
    let cpus = parse_proc_stat_cpus(
        "cpu  10 0 5 100 1 0 0 0 0 0\ncpu0 6 0 3 50 1 0 0 0 0 0\ncpu3 4 0 2 50\nintr 1 2\n",
    );
    let labels: Vec<_> = cpus.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["total", "0", "1"], "position, not CPU id");
    assert_eq!(cpus[2].1, vec![4, 0, 2, 50, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn net_dev_and_diskstats() {
    let net = parse_net_dev(
        "Inter-|   Receive |  Transmit\n face |bytes packets\n    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\neth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n",
    );
    assert_eq!(net.len(), 2);
    assert_eq!(net[1].0, "eth0");
    assert_eq!(net[1].1[15], 16);
    let disks = parse_diskstats(
        "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n 259 0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n",
    );
    assert_eq!(disks[0].0, "sda");
    assert_eq!(disks[0].1.len(), 17);
    assert_eq!(disks[0].1[16], 0, "absent optional column is 0");
    assert_eq!(disks[1].1[16], 17);
}

#[test]
fn filesystem_selection() {
    let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
23 22 8:1 /x /bind rw - ext4 /dev/sda1 rw\n\
24 22 0:5 / /proc rw - proc proc rw\n\
25 22 8:2 / /ro ro - xfs /dev/sda2 ro,attr2\n\
26 22 0:40 / /with\\040space rw - overlay overlay rw,lowerdir=/a\n";
    let fs = filesystems(info);
    assert_eq!(
        fs,
        vec![
            Filesystem {
                mount_point: "/".into(),
                device: "sda1".into()
            },
            Filesystem {
                mount_point: "/with space".into(),
                device: "overlay".into()
            },
        ]
    );
}

#[test]
fn container_families_from_stats() {
    use engine::cgroups::{BlkioStats, BlkioStatsEntry, CpuStats, MemoryStats, PidsStats};
    let mut s = engine::cgroups::Stats::default();
    let mut cpu = CpuStats::default();
    cpu.cpu_usage.total_usage = 2_500_000_000;
    s.cpu = Some(cpu);
    let mut mem = MemoryStats::default();
    mem.usage.usage = 4096;
    mem.usage.limit = u64::MAX;
    s.memory = Some(mem);
    s.pids = Some(PidsStats {
        current: 3,
        limit: 0,
    });
    s.blkio = Some(BlkioStats {
        io_service_bytes_recursive: vec![
            BlkioStatsEntry {
                major: 8,
                minor: 0,
                op: "read".into(),
                value: 512,
            },
            BlkioStatsEntry {
                major: 8,
                minor: 0,
                op: "total".into(),
                value: 512,
            },
        ],
        ..Default::default()
    });
    let fams = container_samples(&[("c1".into(), s)]);
    assert_eq!(
        fams[0],
        vec![(vec![("container_id", "c1".to_string())], 2.5)]
    );
    assert_eq!(fams[5][0].1, 4096.0);
    assert!(fams[7].is_empty(), "no limit series when unlimited");
    assert_eq!(fams[11][0].1, 3.0);
    assert!(fams[12].is_empty());
    assert_eq!(
        fams[13],
        vec![(
            vec![
                ("container_id", "c1".to_string()),
                ("device", "8:0".to_string()),
                ("op", "read".to_string())
            ],
            512.0
        )]
    );
}

#[test]
fn registry_text_has_the_families() {
    let m = Metrics::new().unwrap();
    m.scrape_count.inc();
    m.refresh_host();
    let text = m.encode().unwrap();
    for family in [
        "kata_agent_scrape_count 1",
        "# HELP kata_agent_threads Agent process threads",
        "# TYPE kata_guest_meminfo gauge",
        "kata_guest_cpu_time{cpu=\"total\",item=\"user\"}",
        "kata_guest_tasks{item=\"max\"}",
        "kata_agent_proc_status{item=\"vmrss\"}",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    assert!(
        !text.contains("kata_container_"),
        "no containers, no series"
    );
}

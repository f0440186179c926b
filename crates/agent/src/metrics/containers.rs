//! The per-container `kata_container_*` families, from the containers' cgroup statistics.

use super::*;

/// Per-container families, rebuilt from the last snapshot at every scrape.
pub(super) struct ContainerCollector {
    pub(super) descs: Vec<Desc>,
    pub(super) snapshot: Mutex<Vec<(String, engine::cgroups::Stats)>>,
}

/// The `kata_container_*` families: (name, help, type, extra label).
pub(super) const CONTAINER_FAMILIES: [(&str, &str, MetricType, Option<&str>); 15] = [
    (
        "kata_container_cpu_usage_seconds_total",
        "CPU time consumed by the container's processes, in seconds.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_cpu_user_seconds_total",
        "CPU time the container's processes spent in user mode, in seconds.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_cpu_system_seconds_total",
        "CPU time the container's processes spent in kernel mode, in seconds.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_cpu_throttled_periods_total",
        "CFS periods in which the container was throttled.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_cpu_throttled_seconds_total",
        "Time the container was throttled, in seconds.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_memory_usage_bytes",
        "Memory used by the container, in bytes.",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_max_usage_bytes",
        "Peak memory use of the container, in bytes.",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_limit_bytes",
        "Memory limit of the container, in bytes (absent when unlimited).",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_cache_bytes",
        "Page cache charged to the container, in bytes (cgroup v1).",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_swap_usage_bytes",
        "Swap used by the container, in bytes (cgroup v1: memory plus swap).",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_failcnt_total",
        "Times the container hit its memory limit.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_pids_current",
        "Tasks in the container.",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_pids_limit",
        "Task limit of the container (absent when unlimited).",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_blkio_bytes_total",
        "Bytes transferred by the container's block I/O, by device and operation.",
        MetricType::COUNTER,
        Some("op"),
    ),
    (
        "kata_container_blkio_ios_total",
        "Block I/O operations of the container, by device and operation.",
        MetricType::COUNTER,
        Some("op"),
    ),
];

impl ContainerCollector {
    pub(super) fn new() -> prometheus::Result<ContainerCollector> {
        let descs = CONTAINER_FAMILIES
            .iter()
            .map(|(name, help, _, extra)| {
                let mut labels = vec!["container_id".to_string()];
                if extra.is_some() {
                    labels.push("device".to_string());
                    labels.push("op".to_string());
                }
                Desc::new(name.to_string(), help.to_string(), labels, HashMap::new())
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(ContainerCollector {
            descs,
            snapshot: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn set(&self, stats: Vec<(String, engine::cgroups::Stats)>) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }
}

/// One sample of a container family: label pairs (sorted by name) and value.
pub(super) type Sample = (Vec<(&'static str, String)>, f64);

/// The samples of every container family, in [`CONTAINER_FAMILIES`] order.
pub(super) fn container_samples(stats: &[(String, engine::cgroups::Stats)]) -> Vec<Vec<Sample>> {
    let mut fams: Vec<Vec<Sample>> = vec![Vec::new(); CONTAINER_FAMILIES.len()];
    const NS: f64 = 1e9;
    for (id, s) in stats {
        let mut put = |i: usize, v: f64| fams[i].push((vec![("container_id", id.clone())], v));
        if let Some(cpu) = &s.cpu {
            put(0, cpu.cpu_usage.total_usage as f64 / NS);
            put(1, cpu.cpu_usage.usage_in_usermode as f64 / NS);
            put(2, cpu.cpu_usage.usage_in_kernelmode as f64 / NS);
            put(3, cpu.throttling_data.throttled_periods as f64);
            put(4, cpu.throttling_data.throttled_time as f64 / NS);
        }
        if let Some(mem) = &s.memory {
            put(5, mem.usage.usage as f64);
            put(6, mem.usage.max_usage as f64);
            if mem.usage.limit > 0 && mem.usage.limit < UNLIMITED {
                put(7, mem.usage.limit as f64);
            }
            put(8, mem.cache as f64);
            put(9, mem.swap_usage.usage as f64);
            put(10, mem.usage.failcnt as f64);
        }
        if let Some(pids) = &s.pids {
            put(11, pids.current as f64);
            if pids.limit > 0 {
                put(12, pids.limit as f64);
            }
        }
        if let Some(blkio) = &s.blkio {
            let mut bytes: HashMap<(String, &'static str), u64> = HashMap::new();
            let mut ios: HashMap<(String, &'static str), u64> = HashMap::new();
            for e in &blkio.io_service_bytes_recursive {
                let dev = format!("{}:{}", e.major, e.minor);
                let (map, op) = match e.op.as_str() {
                    "read" => (&mut bytes, "read"),
                    "write" => (&mut bytes, "write"),
                    "dbytes" => (&mut bytes, "discard"),
                    "rios" => (&mut ios, "read"),
                    "wios" => (&mut ios, "write"),
                    "dios" => (&mut ios, "discard"),
                    _ => continue,
                };
                *map.entry((dev, op)).or_default() += e.value;
            }
            for e in &blkio.io_serviced_recursive {
                let op = match e.op.as_str() {
                    "read" => "read",
                    "write" => "write",
                    _ => continue,
                };
                *ios.entry((format!("{}:{}", e.major, e.minor), op))
                    .or_default() += e.value;
            }
            for (i, map) in [(13, bytes), (14, ios)] {
                for ((dev, op), v) in map {
                    fams[i].push((
                        vec![
                            ("container_id", id.clone()),
                            ("device", dev),
                            ("op", op.to_string()),
                        ],
                        v as f64,
                    ));
                }
            }
        }
    }
    fams
}

impl Collector for ContainerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        let samples = container_samples(&snapshot);
        CONTAINER_FAMILIES
            .iter()
            .zip(samples)
            .filter(|(_, s)| !s.is_empty())
            .map(|((name, help, kind, _), samples)| {
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(help.to_string());
                mf.set_field_type(*kind);
                let metrics = samples
                    .into_iter()
                    .map(|(labels, v)| {
                        let mut m = proto::Metric::default();
                        m.set_label(
                            labels
                                .into_iter()
                                .map(|(k, v)| {
                                    let mut lp = proto::LabelPair::default();
                                    lp.set_name(k.to_string());
                                    lp.set_value(v);
                                    lp
                                })
                                .collect(),
                        );
                        if *kind == MetricType::COUNTER {
                            let mut c = proto::Counter::default();
                            c.set_value(v);
                            m.set_counter(c);
                        } else {
                            let mut g = proto::Gauge::default();
                            g.set_value(v);
                            m.set_gauge(g);
                        }
                        m
                    })
                    .collect();
                mf.set_metric(metrics);
                mf
            })
            .collect()
    }
}

/// Lets the registry own a handle while the scrape code keeps another.
pub(super) struct SharedCollector(pub(super) Arc<ContainerCollector>);

impl Collector for SharedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

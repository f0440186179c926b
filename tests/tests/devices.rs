//! End-to-end tests of devices and hot-plug through the real agent: waiting on real kernel
//! uevents (loop devices), the hot-plug timeout, PCI paths resolved on a synthetic sysfs, the OCI
//! spec rewrite for block and VFIO devices, CPU/memory hot-plug on a synthetic sysfs updating a
//! real cpuset cgroup, and GetGuestDetails.

mod storage_support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use e2e::{ctx, AgentOptions, TestAgent};
use protobuf::MessageField;
use protocols::agent;
use protocols::oci;
use storage_support::*;

/// An agent whose sysfs and /dev roots are test directories.
struct Synthetic {
    sys: tempfile::TempDir,
    dev: tempfile::TempDir,
}

impl Synthetic {
    fn new() -> Synthetic {
        Synthetic {
            sys: tempfile::tempdir().unwrap(),
            dev: tempfile::tempdir().unwrap(),
        }
    }

    fn sys(&self) -> &Path {
        self.sys.path()
    }

    fn dev(&self) -> &Path {
        self.dev.path()
    }

    fn options(&self, cmdline: Option<&str>) -> AgentOptions<'static> {
        AgentOptions {
            env: vec![
                ("KATA_AGENT_SYSFS", self.sys().display().to_string()),
                ("KATA_AGENT_DEV_ROOT", self.dev().display().to_string()),
            ],
            cmdline: cmdline.map(str::to_string),
            ..Default::default()
        }
    }
}

fn device(
    typ: &str,
    id: &str,
    vm_path: &str,
    container_path: &str,
    options: &[&str],
) -> agent::Device {
    let mut d = agent::Device::new();
    d.type_ = typ.into();
    d.id = id.into();
    d.vm_path = vm_path.into();
    d.container_path = container_path.into();
    d.options = strs(options);
    d
}

fn spec_device(path: &str, typ: &str, major: i64, minor: i64) -> oci::LinuxDevice {
    let mut d = oci::LinuxDevice::new();
    d.Path = path.into();
    d.Type = typ.into();
    d.Major = major;
    d.Minor = minor;
    d.FileMode = 0o660;
    d
}

fn rule(allow: bool, typ: &str, major: i64, minor: i64, access: &str) -> oci::LinuxDeviceCgroup {
    let mut r = oci::LinuxDeviceCgroup::new();
    r.Allow = allow;
    r.Type = typ.into();
    r.Major = major;
    r.Minor = minor;
    r.Access = access.into();
    r
}

fn bundle_spec(pod: &Pod, cid: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(pod.run_dir().join(cid).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn hotplug_wait_succeeds_on_a_real_uevent() {
    rt().block_on(async {
        // Neither the synthetic sysfs nor the empty /dev root shows the disk: only the kernel's
        // uevent for it can satisfy the wait.
        let syn = Synthetic::new();
        let pod = Pod::new(TestAgent::start_with(syn.options(None))).await;
        let lo = LoopDev::new(pod.agent.dir.path(), "hot", 32);
        let mp = pod.run_dir().join("sandbox/storage/hot");
        let mut st = storage("mmioblk", &format!("/dev/{}", lo.name()), "ext4", &mp, &[]);
        st.driver_options = strs(&["create_filesystem"]);

        let stop = Arc::new(AtomicBool::new(false));
        let trigger = {
            let stop = stop.clone();
            let uevent = PathBuf::from(format!("/sys/block/{}/uevent", lo.name()));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::fs::write(&uevent, "add").unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            })
        };
        let res = pod.create_sandbox(vec![st]).await;
        stop.store(true, Ordering::SeqCst);
        trigger.join().unwrap();
        res.unwrap();

        // The node was made from the event's numbers, and the disk is mounted.
        let node = syn.dev().join(lo.name());
        let meta = std::fs::metadata(&node).unwrap();
        assert!(meta.file_type().is_block_device());
        let (maj, min) = lo.numbers();
        assert_eq!(
            (
                nix::sys::stat::major(meta.rdev()),
                nix::sys::stat::minor(meta.rdev())
            ),
            (maj, min)
        );
        assert!(
            pod.mounts().iter().any(|m| Path::new(m) == mp),
            "{:?}",
            pod.mounts()
        );
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
    });
}

#[test]
fn a_device_that_never_appears_times_out_with_the_configured_timeout() {
    rt().block_on(async {
        let syn = Synthetic::new();
        // A PCI bridge at 02 with nothing behind it, and one SCSI host.
        std::fs::create_dir_all(
            syn.sys()
                .join("devices/pci0000:00/0000:00:02.0/pci_bus/0000:01"),
        )
        .unwrap();
        let host = syn.sys().join("class/scsi_host/host0");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("scan"), "").unwrap();
        let pod = Pod::new(TestAgent::start_with(
            syn.options(Some("agent.hotplug_timeout=500ms")),
        ))
        .await;
        let run = pod.run_dir();

        let mp = run.join("sandbox/storage/never");
        let msg = assert_code(
            pod.create_sandbox(vec![storage("mmioblk", "/dev/vdz", "ext4", &mp, &[])])
                .await,
            ttrpc::Code::DEADLINE_EXCEEDED,
        );
        assert!(msg.contains("/dev/vdz") && msg.contains("500ms"), "{msg}");
        assert!(!mp.exists());

        let msg = assert_code(
            pod.create_sandbox(vec![storage("scsi", "1:2", "ext4", &mp, &[])])
                .await,
            ttrpc::Code::DEADLINE_EXCEEDED,
        );
        assert!(
            msg.contains("SCSI device 1:2") && msg.contains("500ms"),
            "{msg}"
        );
        assert_eq!(std::fs::read_to_string(host.join("scan")).unwrap(), "0 1 2");

        let mut s = spec(None, "true", vec![]);
        s.Linux.as_mut().unwrap().Devices = vec![spec_device("/dev/xvdb", "b", 252, 16)];
        let msg = assert_code(
            pod.try_create(
                "c1",
                s,
                vec![],
                vec![device("blk", "02/03", "", "/dev/xvdb", &[])],
            )
            .await,
            ttrpc::Code::DEADLINE_EXCEEDED,
        );
        assert!(
            msg.contains("PCI path 02/03") && msg.contains("500ms"),
            "{msg}"
        );
        assert!(!run.join("c1").exists());

        let mut swap = agent::AddSwapRequest::new();
        swap.PCIPath = vec![2, 4];
        let msg = assert_code(
            pod.c.add_swap(ctx(), &swap).await,
            ttrpc::Code::DEADLINE_EXCEEDED,
        );
        assert!(msg.contains("02/04"), "{msg}");
        assert!(pod.mounts().is_empty());
        pod.destroy_sandbox().await;
    });
}

#[test]
fn pci_path_block_storage_and_device_on_a_synthetic_sysfs() {
    rt().block_on(async {
        let syn = Synthetic::new();
        let pod = Pod::new(TestAgent::start_with(syn.options(None))).await;
        // The "virtio-blk disk" behind bridge 02, slot 03 is really a loop device.
        let lo = LoopDev::new(pod.agent.dir.path(), "pci", 32);
        let (maj, min) = lo.numbers();
        synthetic_virtio_blk(syn.sys(), 0x02, 0x01, 0x03, "vdb", maj, min);

        let mp = pod.run_dir().join("sandbox/storage/pci");
        let mut st = storage("blk", "02/03", "ext4", &mp, &[]);
        st.driver_options = strs(&["create_filesystem"]);
        pod.create_sandbox(vec![st]).await.unwrap();
        assert!(syn.dev().join("vdb").exists());
        assert!(pod.mounts().iter().any(|m| Path::new(m) == mp));

        // The same disk as a container device: the spec's host numbers become the guest's.
        let mut s = spec(
            None,
            "stat -c '%t:%T' /dev/xvdb && head -c 4096 /dev/xvdb | wc -c",
            vec![],
        );
        {
            let linux = s.Linux.as_mut().unwrap();
            linux.Devices = vec![spec_device("/dev/xvdb", "b", 252, 16)];
            let res = linux.Resources.as_mut().unwrap();
            res.Devices = vec![rule(false, "a", 0, 0, "rwm"), rule(true, "b", 252, 16, "r")];
        }
        pod.try_create(
            "c1",
            s,
            vec![],
            vec![device("blk", "02/03", "", "/dev/xvdb", &[])],
        )
        .await
        .unwrap();
        let cfg = bundle_spec(&pod, "c1");
        let dev = &cfg["linux"]["devices"][0];
        assert_eq!(
            (dev["major"].as_u64(), dev["minor"].as_u64()),
            (Some(maj), Some(min)),
            "{dev}"
        );
        let rules = cfg["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[1]["major"].as_u64(), Some(maj), "{rules:?}");
        assert_eq!(rules[1]["access"], "r");
        assert_eq!(rules.last().unwrap()["access"], "rwm");
        let (code, out) = pod.run_init("c1").await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(out, format!("{maj:x}:{min:x}\n4096\n"));
        pod.remove("c1").await;
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
    });
}

#[test]
fn vfio_pci_device_on_a_synthetic_sysfs() {
    rt().block_on(async {
        let syn = Synthetic::new();
        let sys = syn.sys();
        // Bridge 05 -> bus 01, function 0000:01:00.0, bound to nvme, in IOMMU group 7.
        let bdf = "0000:01:00.0";
        std::fs::create_dir_all(sys.join("devices/pci0000:00/0000:00:05.0/pci_bus/0000:01"))
            .unwrap();
        std::fs::create_dir_all(sys.join(format!("devices/pci0000:00/0000:00:05.0/{bdf}")))
            .unwrap();
        let devdir = sys.join("bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&devdir).unwrap();
        std::fs::write(devdir.join("driver_override"), "").unwrap();
        let nvme = sys.join("bus/pci/drivers/nvme");
        std::fs::create_dir_all(&nvme).unwrap();
        std::fs::write(nvme.join("unbind"), "").unwrap();
        std::os::unix::fs::symlink(&nvme, devdir.join("driver")).unwrap();
        std::fs::create_dir_all(sys.join("kernel/iommu_groups/7")).unwrap();
        std::os::unix::fs::symlink(
            sys.join("kernel/iommu_groups/7"),
            devdir.join("iommu_group"),
        )
        .unwrap();
        std::fs::write(sys.join("bus/pci/drivers_probe"), "").unwrap();
        // The guest's VFIO group node (numbers of /dev/null, so that it is harmless).
        std::fs::create_dir_all(syn.dev().join("vfio")).unwrap();
        nix::sys::stat::mknod(
            &syn.dev().join("vfio/7"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        let pod = Pod::new(TestAgent::start_with(syn.options(None))).await;

        let mut s = spec(None, "true", vec![]);
        s.Process
            .as_mut()
            .unwrap()
            .Env
            .push("PCIDEVICE_VENDOR_COM_GPU=0000:3b:00.0".into());
        s.Process
            .as_mut()
            .unwrap()
            .Env
            .push("PCIDEVICE_VENDOR_COM_GPU_INFO={\"0000:3b:00.0\":{}}".into());
        {
            let linux = s.Linux.as_mut().unwrap();
            linux.Devices = vec![spec_device("/dev/vfio/42", "c", 240, 42)];
            linux.Resources.as_mut().unwrap().Devices = vec![rule(true, "c", 240, 42, "rw")];
        }
        let d = device(
            "vfio-pci",
            "vfio-42",
            "",
            "/dev/vfio/42",
            &["0000:3b:00.0=05/00"],
        );
        pod.try_create("c1", s, vec![], vec![d]).await.unwrap();

        assert_eq!(
            std::fs::read_to_string(devdir.join("driver_override")).unwrap(),
            "vfio-pci"
        );
        assert_eq!(std::fs::read_to_string(nvme.join("unbind")).unwrap(), bdf);
        assert_eq!(
            std::fs::read_to_string(sys.join("bus/pci/drivers_probe")).unwrap(),
            bdf
        );
        let cfg = bundle_spec(&pod, "c1");
        let dev = &cfg["linux"]["devices"][0];
        assert_eq!(dev["path"], "/dev/vfio/7", "{dev}");
        assert_eq!(
            (dev["major"].as_u64(), dev["minor"].as_u64()),
            (Some(1), Some(3))
        );
        let rules = cfg["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(
            (rules[0]["major"].as_u64(), rules[0]["minor"].as_u64()),
            (Some(1), Some(3))
        );
        let env: Vec<&str> = cfg["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"PCIDEVICE_VENDOR_COM_GPU=0000:01:00.0"),
            "{env:?}"
        );
        assert!(
            env.contains(&"PCIDEVICE_VENDOR_COM_GPU_INFO={\"0000:01:00.0\":{}}"),
            "{env:?}"
        );
        pod.remove("c1").await;

        // Malformed options and unsupported types.
        let bad = [
            (
                device("vfio-pci", "x", "", "/dev/vfio/1", &["no-equals-sign"]),
                ttrpc::Code::INVALID_ARGUMENT,
            ),
            (
                device("floppy", "x", "", "/dev/fd0", &[]),
                ttrpc::Code::INVALID_ARGUMENT,
            ),
            (
                device("blk", "02/00", "", "", &[]),
                ttrpc::Code::INVALID_ARGUMENT,
            ),
            (
                device("blk", "", "", "/dev/vdc", &[]),
                ttrpc::Code::INVALID_ARGUMENT,
            ),
            (
                device("vfio-ap", "x", "", "/dev/z90crypt", &["card"]),
                ttrpc::Code::UNIMPLEMENTED,
            ),
        ];
        for (d, code) in bad {
            let msg = assert_code(
                pod.try_create("c2", spec(None, "true", vec![]), vec![], vec![d])
                    .await,
                code,
            );
            assert!(!msg.is_empty());
        }
        // A device the spec does not list.
        let msg = assert_code(
            pod.try_create(
                "c3",
                spec(None, "true", vec![]),
                vec![],
                vec![device(
                    "vfio-pci",
                    "x",
                    "",
                    "/dev/vfio/99",
                    &["0000:3b:00.0=05/00"],
                )],
            )
            .await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(msg.contains("/dev/vfio/99"), "{msg}");
        pod.destroy_sandbox().await;
    });
}

/// Removes the test's cgroup directories in every v1 hierarchy, deepest first.
struct CgroupCleanup(String);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for e in entries.flatten() {
            let base = e.path().join(&self.0);
            let _ = std::fs::remove_dir(base.join("c1"));
            let _ = std::fs::remove_dir(&base);
        }
    }
}

#[test]
fn online_cpu_mem_on_a_synthetic_sysfs_widens_a_real_cpuset() {
    rt().block_on(async {
        let syn = Synthetic::new();
        let cpu = syn.sys().join("devices/system/cpu");
        std::fs::create_dir_all(cpu.join("cpu0")).unwrap();
        std::fs::create_dir_all(cpu.join("cpu1")).unwrap();
        std::fs::write(cpu.join("cpu1/online"), "0\n").unwrap();
        let mem = syn.sys().join("devices/system/memory");
        std::fs::create_dir_all(mem.join("memory8")).unwrap();
        std::fs::write(mem.join("memory8/online"), "0\n").unwrap();
        std::fs::write(mem.join("probe"), "").unwrap();
        let pod = Pod::new(TestAgent::start_with(syn.options(None))).await;

        let parent = format!("kata-e2e-{}-cpuset", std::process::id());
        let _cleanup = CgroupCleanup(parent.clone());
        let mut s = spec(None, "sleep 1000", vec![]);
        {
            let linux = s.Linux.as_mut().unwrap();
            linux.CgroupsPath = format!("/{parent}/c1");
            let mut c = oci::LinuxCPU::new();
            c.Cpus = "0".into();
            linux.Resources.as_mut().unwrap().CPU = MessageField::some(c);
        }
        pod.try_create("c1", s, vec![], vec![]).await.unwrap();
        pod.start("c1").await;
        let cpuset = Path::new("/sys/fs/cgroup/cpuset").join(&parent);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap().trim().to_string();
        // Before the hot-plug the pod's cpuset only had CPU 0.
        std::fs::write(cpuset.join("cpuset.cpus"), "0").unwrap();
        assert_eq!(read(&cpuset.join("c1/cpuset.cpus")), "0");

        let mut req = agent::OnlineCPUMemRequest::new();
        req.nb_cpus = 2;
        pod.c.online_cpu_mem(ctx(), &req).await.unwrap();
        assert_eq!(read(&cpu.join("cpu1/online")), "1");
        assert_eq!(read(&mem.join("memory8/online")), "1");
        assert_eq!(read(&cpuset.join("cpuset.cpus")), "0-1");
        assert_eq!(read(&cpuset.join("c1/cpuset.cpus")), "0");

        // More CPUs than exist: a clear error after the retries.
        req.nb_cpus = 3;
        req.cpu_only = true;
        let msg = assert_code(
            pod.c.online_cpu_mem(ctx(), &req).await,
            ttrpc::Code::INTERNAL,
        );
        assert!(msg.contains("3 CPU"), "{msg}");

        let mut probe = agent::MemHotplugByProbeRequest::new();
        probe.memHotplugProbeAddr = vec![0x1_0000_0000];
        pod.c.mem_hotplug_by_probe(ctx(), &probe).await.unwrap();
        assert_eq!(read(&mem.join("probe")), "0x100000000");

        pod.remove("c1").await;
        pod.destroy_sandbox().await;
    });
}

#[test]
fn guest_details_report_storage_and_device_handlers() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let resp = pod
            .c
            .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await
            .unwrap();
        let d = resp.agent_details.unwrap();
        for s in [
            "virtio-fs",
            "9p",
            "blk",
            "mmioblk",
            "scsi",
            "nvdimm",
            "ephemeral",
            "local",
            "overlayfs",
            "watchable-bind",
        ] {
            assert!(
                d.storage_handlers.iter().any(|h| h == s),
                "{s}: {:?}",
                d.storage_handlers
            );
        }
        for h in ["blk", "mmioblk", "scsi", "nvdimm", "vfio-pci"] {
            assert!(
                d.device_handlers.iter().any(|x| x == h),
                "{h}: {:?}",
                d.device_handlers
            );
        }
    });
}

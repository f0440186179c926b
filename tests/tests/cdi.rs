//! End-to-end tests of CDI devices (spec files in a test directory), the PCI environment rewrite
//! of ExecProcess (synthetic sysfs) and the shared mounts of CreateContainer, through the real
//! agent.

mod storage_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{ctx, AgentOptions, TestAgent};
use protobuf::MessageField;
use protocols::agent;
use protocols::oci;
use storage_support::*;

/// Spec directories of a test: `etc` (low precedence) and `run`.
struct CdiDirs {
    dir: tempfile::TempDir,
}

impl CdiDirs {
    fn new() -> CdiDirs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        // `run` is created by the tests that need it (a missing directory is empty).
        CdiDirs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self) -> PathBuf {
        self.path().join("run")
    }

    fn options(&self, cmdline: Option<&str>) -> AgentOptions<'static> {
        AgentOptions {
            env: vec![(
                "KATA_AGENT_CDI_SPEC_DIRS",
                format!(
                    "{}:{}",
                    self.path().join("etc").display(),
                    self.run().display()
                ),
            )],
            cmdline: cmdline.map(str::to_string),
            ..Default::default()
        }
    }
}

fn with_annotation(mut s: oci::Spec, key: &str, value: &str) -> oci::Spec {
    s.Annotations.insert(key.into(), value.into());
    s
}

/// The YAML spec of kind `example.com/test`: a device `null` (a node at another path than its
/// host node, a read-only bind mount, env, a createRuntime hook) and a device `zero`.
fn yaml_spec(data: &Path, marker: &Path) -> String {
    format!(
        r#"cdiVersion: "0.6.0"
kind: example.com/test
containerEdits:
  env: [CDI_SPEC=1]
devices:
- name: "null"
  containerEdits:
    env: [CDI_DEV=null]
    deviceNodes:
    - path: /dev/cdi-null
      hostPath: /dev/null
    mounts:
    - hostPath: {data}
      containerPath: /tmp/cdi-data
      options: [ro, rbind]
    hooks:
    - hookName: createRuntime
      path: /bin/sh
      args: [sh, -c, 'echo "$CDI_HOOK_VAR" > {marker}']
      env: [CDI_HOOK_VAR=hook-ran]
- name: zero
  containerEdits:
    deviceNodes:
    - {{path: /dev/cdi-zero, hostPath: /dev/zero, permissions: rw}}
"#,
        data = data.display(),
        marker = marker.display()
    )
}

#[test]
fn cdi_device_gets_node_mount_env_and_hook() {
    rt().block_on(async {
        let dirs = CdiDirs::new();
        let data = dirs.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("hello"), "cdi-data\n").unwrap();
        let marker = dirs.path().join("hook-marker");
        std::fs::write(dirs.path().join("etc/test.yaml"), yaml_spec(&data, &marker)).unwrap();
        let pod = Pod::new(TestAgent::start_with(dirs.options(None))).await;

        let script = "[ -c /dev/cdi-null ] && echo x > /dev/cdi-null && [ -c /dev/cdi-zero ] \
                      && cat /tmp/cdi-data/hello && echo $CDI_SPEC $CDI_DEV \
                      && ! touch /tmp/cdi-data/new 2>/dev/null";
        let s = with_annotation(
            spec(None, script, vec![]),
            "cdi.k8s.io/test",
            "example.com/test=null,example.com/test=zero",
        );
        pod.try_create("cdi-c1", s, vec![], vec![]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hook-ran\n");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(pod.run_dir().join("cdi-c1/config.json")).unwrap(),
        )
        .unwrap();
        let devs = cfg["linux"]["devices"].as_array().unwrap();
        let null = devs.iter().find(|d| d["path"] == "/dev/cdi-null").unwrap();
        assert_eq!(
            (
                null["type"].as_str(),
                null["major"].as_u64(),
                null["minor"].as_u64()
            ),
            (Some("c"), Some(1), Some(3))
        );
        let rules = cfg["linux"]["resources"]["devices"].as_array().unwrap();
        assert!(
            rules.iter().any(|r| r["major"] == 1
                && r["minor"] == 5
                && r["access"] == "rw"
                && r["allow"] == true),
            "{rules:?}"
        );
        let (status, out) = pod.run_init("cdi-c1").await;
        assert_eq!((status, out.as_str()), (0, "cdi-data\n1 null\n"));
        pod.remove("cdi-c1").await;
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());

        // The sandbox's own container gets no CDI devices.
        let s = with_annotation(
            with_annotation(
                spec(None, "[ ! -e /dev/cdi-null ]", vec![]),
                "cdi.k8s.io/test",
                "example.com/test=null",
            ),
            "io.katacontainers.pkg.oci.container_type",
            "pod_sandbox",
        );
        std::fs::remove_file(&marker).unwrap();
        pod.try_create("cdi-c2", s, vec![], vec![]).await.unwrap();
        assert_eq!(pod.run_init("cdi-c2").await.0, 0);
        assert!(!marker.exists());
        pod.remove("cdi-c2").await;
        pod.destroy_sandbox().await;
    });
}

#[test]
fn missing_cdi_device_is_a_clear_error_and_leaves_nothing() {
    rt().block_on(async {
        let dirs = CdiDirs::new();
        std::fs::write(
            dirs.path().join("etc/test.json"),
            r#"{"cdiVersion":"0.6.0","kind":"example.com/test","devices":[{"name":"null",
                "containerEdits":{"deviceNodes":[{"path":"/dev/cdi-null","hostPath":"/dev/null"}]}}]}"#,
        )
        .unwrap();
        // A spec file naming a host node that does not exist.
        std::fs::write(
            dirs.path().join("etc/broken.json"),
            r#"{"cdiVersion":"0.6.0","kind":"example.com/broken","devices":[{"name":"b",
                "containerEdits":{"deviceNodes":[{"path":"/dev/b","hostPath":"/nonexistent/node"}]}}]}"#,
        )
        .unwrap();
        let pod = Pod::new(TestAgent::start_with(dirs.options(Some("agent.cdi_timeout=1")))).await;
        let cases = [
            // The kind is known but not the device: refused at once.
            ("example.com/test=gpu7", ttrpc::Code::NOT_FOUND, "example.com/test=gpu7"),
            // No spec of the kind within agent.cdi_timeout.
            ("other.com/gpu=0", ttrpc::Code::DEADLINE_EXCEEDED, "other.com/gpu=0"),
            ("not-a-cdi-name", ttrpc::Code::INVALID_ARGUMENT, "not-a-cdi-name"),
            ("example.com/broken=b", ttrpc::Code::FAILED_PRECONDITION, "/nonexistent/node"),
        ];
        for (device, code, named) in cases {
            let s = with_annotation(spec(None, "true", vec![]), "cdi.k8s.io/x", device);
            let msg = assert_code(pod.try_create("cdi-miss", s, vec![], vec![]).await, code);
            assert!(msg.contains(named), "{device}: {msg}");
            assert!(!pod.run_dir().join("cdi-miss").exists(), "{device}: bundle left behind");
        }
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
        // Nothing of the failed attempts is in the way of the container.
        let s = with_annotation(spec(None, "[ -c /dev/cdi-null ]", vec![]), "cdi.k8s.io/x", "example.com/test=null");
        pod.try_create("cdi-miss", s, vec![], vec![]).await.unwrap();
        assert_eq!(pod.run_init("cdi-miss").await.0, 0);
        pod.remove("cdi-miss").await;
        pod.destroy_sandbox().await;
    });
}

#[test]
fn cdi_spec_written_late_is_used_within_the_timeout() {
    rt().block_on(async {
        let dirs = CdiDirs::new();
        let pod = Pod::new(TestAgent::start_with(
            dirs.options(Some("agent.cdi_timeout=30")),
        ))
        .await;
        let run = dirs.run();
        // The spec directory and file appear after the request (written aside, then renamed).
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(
                run.join(".late.tmp"),
                r#"{"cdiVersion":"0.6.0","kind":"example.com/late","devices":[{"name":"dev0",
                    "containerEdits":{"env":["LATE=yes"],
                    "deviceNodes":[{"path":"/dev/late0","hostPath":"/dev/zero"}]}}]}"#,
            )
            .unwrap();
            std::fs::rename(run.join(".late.tmp"), run.join("late.json")).unwrap();
        });
        let s = with_annotation(
            spec(None, "[ -c /dev/late0 ] && echo $LATE", vec![]),
            "cdi.k8s.io/late",
            "example.com/late=dev0",
        );
        pod.try_create("cdi-late", s, vec![], vec![]).await.unwrap();
        writer.join().unwrap();
        assert_eq!(pod.run_init("cdi-late").await, (0, "yes\n".to_string()));
        pod.remove("cdi-late").await;
        pod.destroy_sandbox().await;
    });
}

/// Runs `script` with `env` in the running container; returns (status, stdout).
async fn exec_with_env(
    pod: &Pod,
    cid: &str,
    exec_id: &str,
    script: &str,
    env: &[&str],
) -> (i32, String) {
    let mut p = spec(None, script, vec![]).Process.unwrap();
    p.Env.extend(env.iter().map(|e| e.to_string()));
    let mut req = agent::ExecProcessRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    req.process = MessageField::some(p);
    pod.c.exec_process(ctx(), &req).await.expect("ExecProcess");
    let mut out = Vec::new();
    loop {
        let mut r = agent::ReadStreamRequest::new();
        r.container_id = cid.into();
        r.exec_id = exec_id.into();
        r.len = 32 * 1024;
        let data = pod.c.read_stdout(ctx(), &r).await.expect("ReadStdout").data;
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(&data);
    }
    let mut w = agent::WaitProcessRequest::new();
    w.container_id = cid.into();
    w.exec_id = exec_id.into();
    let status = pod
        .c
        .wait_process(ctx(), &w)
        .await
        .expect("WaitProcess")
        .status;
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn exec_process_gets_the_pci_environment_rewrite() {
    rt().block_on(async {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        let sys = sys.path();
        // Bridge 05 -> bus 01: guest function 0000:01:00.0, already bound to vfio-pci, group 7.
        let bdf = "0000:01:00.0";
        std::fs::create_dir_all(sys.join("devices/pci0000:00/0000:00:05.0/pci_bus/0000:01")).unwrap();
        std::fs::create_dir_all(sys.join(format!("devices/pci0000:00/0000:00:05.0/{bdf}"))).unwrap();
        let devdir = sys.join("bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&devdir).unwrap();
        std::fs::write(devdir.join("driver_override"), "").unwrap();
        let vfio = sys.join("bus/pci/drivers/vfio-pci");
        std::fs::create_dir_all(&vfio).unwrap();
        std::os::unix::fs::symlink(&vfio, devdir.join("driver")).unwrap();
        std::fs::create_dir_all(sys.join("kernel/iommu_groups/7")).unwrap();
        std::os::unix::fs::symlink(sys.join("kernel/iommu_groups/7"), devdir.join("iommu_group")).unwrap();
        std::fs::create_dir_all(dev.path().join("vfio")).unwrap();
        nix::sys::stat::mknod(
            &dev.path().join("vfio/7"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        let pod = Pod::new(TestAgent::start_with(AgentOptions {
            env: vec![
                ("KATA_AGENT_SYSFS", sys.display().to_string()),
                ("KATA_AGENT_DEV_ROOT", dev.path().display().to_string()),
            ],
            ..Default::default()
        }))
        .await;

        let mut s = spec(None, "exec sleep 1000", vec![]);
        {
            let linux = s.Linux.as_mut().unwrap();
            let mut d = oci::LinuxDevice::new();
            d.Path = "/dev/vfio/42".into();
            d.Type = "c".into();
            d.Major = 240;
            d.Minor = 42;
            d.FileMode = 0o660;
            linux.Devices = vec![d];
        }
        let mut d = agent::Device::new();
        d.type_ = "vfio-pci".into();
        d.id = "vfio-42".into();
        d.container_path = "/dev/vfio/42".into();
        d.options = vec!["0000:3b:00.0=05/00".into()];
        pod.try_create("pci-exec", s, vec![], vec![d]).await.unwrap();
        pod.start("pci-exec").await;

        let env = [
            "PCIDEVICE_VENDOR_COM_GPU=0000:3b:00.0",
            "PCIDEVICE_VENDOR_COM_GPU_INFO={\"0000:3b:00.0\":{\"generic\":{\"deviceID\":\"0000:3b:00.0\"}}}",
            "PCIDEVICE_VENDOR_COM_NIC=0000:3c:00.0",
            "OTHER=0000:3b:00.0",
        ];
        let script = "echo $PCIDEVICE_VENDOR_COM_GPU; echo $PCIDEVICE_VENDOR_COM_GPU_INFO; \
                      echo $PCIDEVICE_VENDOR_COM_NIC; echo $OTHER";
        let (status, out) = exec_with_env(&pod, "pci-exec", "e1", script, &env).await;
        assert_eq!(status, 0);
        assert_eq!(
            out,
            "0000:01:00.0\n{\"0000:01:00.0\":{\"generic\":{\"deviceID\":\"0000:01:00.0\"}}}\n\
             0000:3c:00.0\n0000:3b:00.0\n"
        );
        pod.remove("pci-exec").await;

        // A container without devices: its processes' variables stay as they are.
        pod.try_create("pci-none", spec(None, "exec sleep 1000", vec![]), vec![], vec![]).await.unwrap();
        pod.start("pci-none").await;
        let (_, out) = exec_with_env(&pod, "pci-none", "e1", "echo $PCIDEVICE_VENDOR_COM_GPU", &env).await;
        assert_eq!(out, "0000:3b:00.0\n");
        pod.remove("pci-none").await;
        pod.destroy_sandbox().await;
    });
}

fn shared_mount(name: &str, src_ctr: &str, src: &str, dst: &str) -> agent::SharedMount {
    let mut m = agent::SharedMount::new();
    m.name = name.into();
    m.src_ctr = src_ctr.into();
    m.src_path = src.into();
    m.dst_ctr = "consumer".into();
    m.dst_path = dst.into();
    m
}

async fn create_with_shared(
    pod: &Pod,
    cid: &str,
    s: oci::Spec,
    shared: Vec<agent::SharedMount>,
) -> ttrpc::Result<()> {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = cid.into();
    req.OCI = MessageField::some(s);
    req.shared_mounts = shared;
    pod.c.create_container(ctx(), &req).await.map(|_| ())
}

#[test]
fn shared_mounts_between_two_containers() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        pod.create_sandbox(vec![]).await.unwrap();
        let name = "io.kubernetes.cri.container-name";
        // The producer has a tmpfs at /tmp/share.
        let src = with_annotation(
            spec(
                None,
                "exec sleep 1000",
                vec![mount_msg("/tmp/share", "tmpfs", "tmpfs", &["size=1m"])],
            ),
            name,
            "producer",
        );
        pod.try_create("sm-src", src, vec![], vec![]).await.unwrap();
        pod.start("sm-src").await;
        assert_eq!(
            pod.exec("sm-src", "w", "echo shared-data > /tmp/share/f")
                .await
                .0,
            0
        );

        // Bad paths are refused before anything is created.
        for (s_path, d_path) in [
            ("/tmp/share", "/tmp/../../etc"),
            ("/tmp/share", "tmp/x"),
            ("share", "/tmp/x"),
            ("/tmp/share", "/"),
        ] {
            let msg = assert_code(
                create_with_shared(
                    &pod,
                    "sm-dst",
                    spec(None, "true", vec![]),
                    vec![shared_mount("m", "producer", s_path, d_path)],
                )
                .await,
                ttrpc::Code::INVALID_ARGUMENT,
            );
            assert!(msg.contains("shared mount"), "{msg}");
        }
        // A destination that cannot be created (below a file): refused, the container removed.
        let msg = assert_code(
            create_with_shared(
                &pod,
                "sm-dst",
                spec(None, "true", vec![]),
                vec![shared_mount("m", "producer", "/tmp/share", "/bin/sh/x")],
            )
            .await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(msg.contains("/bin/sh/x"), "{msg}");
        assert!(!pod.run_dir().join("sm-dst").exists());

        // The consumer sees the producer's tmpfs at a path created for it, and writes to it.
        let dst = with_annotation(
            spec(
                None,
                "cat /tmp/new/dir/share/f && echo back > /tmp/new/dir/share/g",
                vec![],
            ),
            name,
            "consumer",
        );
        create_with_shared(
            &pod,
            "sm-dst",
            dst,
            vec![
                shared_mount("m1", "producer", "/tmp/share", "/tmp/new/dir/share"),
                // No container has this name: skipped.
                shared_mount("m2", "nobody", "/tmp/share", "/tmp/other"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            pod.run_init("sm-dst").await,
            (0, "shared-data\n".to_string())
        );
        assert_eq!(
            pod.exec("sm-src", "r", "cat /tmp/share/g").await,
            (0, "back\n".to_string())
        );
        pod.remove("sm-dst").await;
        pod.remove("sm-src").await;
        pod.destroy_sandbox().await;
    });
}

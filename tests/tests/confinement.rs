//! End-to-end tests of path confinement, written as a hostile host would attack: every path the
//! host names stays below its allowed root and is acted on through a descriptor. Each test checks
//! the status code and that nothing outside the allowed place changed (the symlink target is
//! untouched, no mount appeared).

mod storage_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{ctx, TestAgent};
use protobuf::MessageField;
use protocols::agent::{self, FSGroup};
use protocols::types::FSGroupChangePolicy;
use storage_support::*;

/// Every mount point of this process's mount table.
fn all_mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// The mounts below the test agent's directory, except the sandbox namespace files (other
/// engineers' tests mount elsewhere at the same time).
fn pod_mounts(pod: &Pod) -> Vec<String> {
    e2e::mounts_below(pod.agent.dir.path())
        .into_iter()
        .filter(|m| !m.contains("/sandbox-ns/"))
        .collect()
}

fn is_mounted(p: &Path) -> bool {
    let p = p.display().to_string();
    all_mount_points().contains(&p)
}

/// A sandbox whose shared directory is a tmpfs mounted by the virtio-fs driver.
async fn pod_with_share() -> (Pod, PathBuf) {
    let pod = Pod::new(TestAgent::start()).await;
    let shared = pod.run_dir().join("shared/containers");
    let share = storage("virtio-fs", "kataShared", "tmpfs", &shared, &["nodev"]);
    pod.create_sandbox(vec![share]).await.unwrap();
    (pod, shared)
}

/// A directory outside everything the host may name, with a file in it.
fn victim(pod: &Pod) -> PathBuf {
    let v = pod.agent.dir.path().join("victim");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("keep"), "precious\n").unwrap();
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o750)).unwrap();
    v
}

fn assert_victim_untouched(v: &Path) {
    let names: Vec<_> = std::fs::read_dir(v)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("keep")],
        "{v:?} changed"
    );
    assert_eq!(
        std::fs::read_to_string(v.join("keep")).unwrap(),
        "precious\n"
    );
    let meta = std::fs::metadata(v).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o750, "mode of {v:?} changed");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner of {v:?} changed");
}

/// watchable-bind: a copied symlink that the host later turns into a directory is replaced, never
/// followed; deleting through it is impossible too.
#[test]
fn watchable_copy_never_writes_through_a_copied_symlink() {
    rt().block_on(async {
        let (pod, shared) = pod_with_share().await;
        let victim = victim(&pod);
        let cm = shared.join("w1-cm");
        std::fs::create_dir_all(&cm).unwrap();
        std::fs::write(cm.join("key"), "v\n").unwrap();
        std::os::unix::fs::symlink(&victim, cm.join("a")).unwrap();
        let target = shared.join("watchable/w1-cm");
        let st = storage(
            "watchable-bind",
            &cm.display().to_string(),
            "bind",
            &target,
            &["bind", "ro"],
        );
        pod.try_create("w1", spec(None, "sleep 1000", vec![]), vec![st], vec![])
            .await
            .unwrap();
        assert_eq!(std::fs::read_link(target.join("a")).unwrap(), victim);

        // The host turns `a` into a directory holding a file, and adds a file to `key`'s dir.
        std::fs::remove_file(cm.join("a")).unwrap();
        std::fs::create_dir(cm.join("a")).unwrap();
        std::fs::write(cm.join("a/passwd"), "root::0:0::/:/bin/sh\n").unwrap();
        std::fs::set_permissions(cm.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
        eventually(20, "the copy has the directory a", || {
            std::fs::symlink_metadata(target.join("a")).is_ok_and(|m| m.is_dir())
                && target.join("a/passwd").exists()
        })
        .await;
        assert_victim_untouched(&victim);

        // Back to a symlink, then the directory goes: nothing is deleted through the link.
        std::fs::remove_dir_all(cm.join("a")).unwrap();
        std::os::unix::fs::symlink(&victim, cm.join("a")).unwrap();
        eventually(20, "the copy has the symlink a again", || {
            std::fs::symlink_metadata(target.join("a")).is_ok_and(|m| m.file_type().is_symlink())
        })
        .await;
        std::fs::remove_file(cm.join("a")).unwrap();
        eventually(20, "a vanished from the copy", || {
            std::fs::symlink_metadata(target.join("a")).is_err()
        })
        .await;
        assert_victim_untouched(&victim);
        pod.remove("w1").await;
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

/// Each driver mounts only its own file systems: no bind of the guest root through `ephemeral`,
/// no guest disk through a share driver, no bind through a block driver.
#[test]
fn drivers_accept_only_their_own_fstypes_and_sources() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let run = pod.run_dir();
        let lo = LoopDev::new(pod.agent.dir.path(), "disk", 16);
        sh("mkfs.ext4", &["-q", &lo.dev.display().to_string()]);
        let dev = lo.dev.display().to_string();
        let before = pod_mounts(&pod);
        let cases = [
            storage("ephemeral", "/", "bind", &run.join("sandbox/e1"), &[]),
            storage(
                "ephemeral",
                "/",
                "tmpfs",
                &run.join("sandbox/e2"),
                &["rbind"],
            ),
            storage("ephemeral", &dev, "ext4", &run.join("sandbox/e3"), &[]),
            storage("virtio-fs", &dev, "ext4", &run.join("sandbox/v1"), &[]),
            storage("virtio-fs", "/", "virtiofs", &run.join("sandbox/v2"), &[]),
            storage("9p", &dev, "ext4", &run.join("sandbox/n1"), &[]),
            storage("overlayfs", "/", "bind", &run.join("sandbox/o1"), &[]),
            storage("blk", &dev, "bind", &run.join("sandbox/b1"), &[]),
            storage("blk", &dev, "ext4", &run.join("sandbox/b2"), &["bind"]),
            storage("nvdimm", &dev, "tmpfs", &run.join("sandbox/p1"), &[]),
        ];
        for st in cases {
            let what = format!("{} {:?} {:?}", st.driver, st.fstype, st.source);
            let (code, msg) = status_of(pod.create_sandbox(vec![st]).await);
            assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{what}: {msg}");
        }
        assert_eq!(pod_mounts(&pod), before, "a mount appeared");
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

/// The agent's own directories and files cannot be mounted on or over, nor used as bind sources.
#[test]
fn agent_directories_are_reserved() {
    rt().block_on(async {
        let (pod, shared) = pod_with_share().await;
        let run = pod.run_dir();
        let before = pod_mounts(&pod);
        for mp in [
            run.join("sandbox"),
            run.join("c9"),
            run.join("shared"),
            run.join("c9/config.json"),
            run.join("sandbox/resolv.conf"),
        ] {
            let st = storage("ephemeral", "tmpfs", "tmpfs", &mp, &[]);
            let msg = assert_code(
                pod.try_create("c9", spec(None, "true", vec![]), vec![st], vec![])
                    .await,
                ttrpc::Code::PERMISSION_DENIED,
            );
            assert!(msg.contains("reserved"), "{msg}");
        }
        // A bind source naming an agent file, directly or through a symlink in the share.
        std::fs::create_dir_all(run.join("sandbox")).unwrap();
        std::fs::write(run.join("sandbox/resolv.conf"), "nameserver 1.1.1.1\n").unwrap();
        std::os::unix::fs::symlink("../../sandbox/resolv.conf", shared.join("resolv")).unwrap();
        for src in [run.join("sandbox/resolv.conf"), shared.join("resolv")] {
            let st = storage(
                "virtio-fs",
                &src.display().to_string(),
                "bind",
                &run.join("sandbox/storage/r"),
                &["bind"],
            );
            assert_code(
                pod.try_create("c9", spec(None, "true", vec![]), vec![st], vec![])
                    .await,
                ttrpc::Code::PERMISSION_DENIED,
            );
        }
        // An overlay whose upper layer is an agent directory: the container would write there.
        std::fs::create_dir_all(shared.join("lower")).unwrap();
        std::fs::create_dir_all(run.join("sandbox/work")).unwrap();
        let st = storage(
            "overlayfs",
            "overlay",
            "overlay",
            &run.join("sandbox/storage/ovl"),
            &[
                &format!("lowerdir={}", shared.join("lower").display()),
                &format!("upperdir={}", run.join("sandbox").display()),
                &format!("workdir={}", run.join("sandbox/work").display()),
            ],
        );
        assert_code(
            pod.try_create("c9", spec(None, "true", vec![]), vec![st], vec![])
                .await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert_eq!(pod_mounts(&pod), before, "a mount appeared");
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

async fn diagnostic(pod: &Pod, cid: &str) -> ttrpc::Result<agent::GetDiagnosticDataResponse> {
    let mut req = agent::GetDiagnosticDataRequest::new();
    req.container_id = cid.into();
    req.log_type = "termination_log".into();
    pod.c.get_diagnostic_data(ctx(), &req).await
}

fn with_termination_log(mut s: protocols::oci::Spec, src: &Path) -> protocols::oci::Spec {
    s.Mounts.push(mount_msg(
        "/tmp/termination-log",
        "bind",
        &src.display().to_string(),
        &["bind"],
    ));
    s.Annotations.insert(
        "io.kubernetes.container.terminationMessagePath".into(),
        "/tmp/termination-log".into(),
    );
    s
}

/// GetDiagnosticData reads only regular files below the shared directory: a FIFO is refused at
/// once (no blocked thread), a file elsewhere or a symlink out is refused.
#[test]
fn diagnostic_data_reads_only_regular_files_in_the_share() {
    rt().block_on(async {
        let (pod, shared) = pod_with_share().await;
        let fifo = shared.join("d1-fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let outside = pod.agent.dir.path().join("outside-log");
        std::fs::write(&outside, "host secret\n").unwrap();
        // d3's log is a file when the container is created, a symlink out when it is read.
        std::fs::write(shared.join("d3-link"), "").unwrap();
        let good = shared.join("d4-log");
        std::fs::write(&good, "bye\n").unwrap();
        for (cid, src) in [
            ("d1", fifo.clone()),
            ("d2", outside.clone()),
            ("d3", shared.join("d3-link")),
            ("d4", good.clone()),
        ] {
            let s = with_termination_log(spec(None, "true", vec![]), &src);
            pod.try_create(cid, s, vec![], vec![]).await.unwrap();
        }
        std::fs::remove_file(shared.join("d3-link")).unwrap();
        std::os::unix::fs::symlink(&outside, shared.join("d3-link")).unwrap();
        for cid in ["d1", "d2", "d3"] {
            let r = tokio::time::timeout(Duration::from_secs(20), diagnostic(&pod, cid))
                .await
                .unwrap_or_else(|_| panic!("GetDiagnosticData of {cid} blocked"));
            let msg = assert_code(r, ttrpc::Code::INVALID_ARGUMENT);
            assert!(!msg.contains("host secret"), "{msg}");
        }
        assert_eq!(diagnostic(&pod, "d4").await.unwrap().data, "bye\n");
        for cid in ["d1", "d2", "d3", "d4"] {
            pod.remove(cid).await;
        }
        pod.destroy_sandbox().await;
    });
}

/// CVE-2021-30465 class: a bind source through a symlink planted in a shared volume (by another
/// container) is refused; a mount destination through a symlink stays inside the rootfs.
#[test]
fn spec_mounts_through_planted_symlinks_stay_confined() {
    rt().block_on(async {
        let (pod, shared) = pod_with_share().await;
        let victim = victim(&pod);
        let vol = shared.join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::os::unix::fs::symlink(&victim, vol.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../victim", vol.join("rel")).unwrap();
        std::fs::create_dir(vol.join("real")).unwrap();
        std::os::unix::fs::symlink("real", vol.join("inner")).unwrap();
        let before = pod_mounts(&pod);
        for link in ["abs", "rel", "inner"] {
            let s = spec(None, "true", vec![bind(&vol.join(link), "/tmp/x")]);
            let msg = assert_code(
                pod.try_create("s1", s, vec![], vec![]).await,
                ttrpc::Code::INVALID_ARGUMENT,
            );
            assert!(msg.contains("symlink"), "{msg}");
        }
        assert_eq!(pod_mounts(&pod), before, "a mount appeared");

        // Destination: the volume holds `evil -> /tmp` (absolute); a mount at /tmp/v/evil/esc
        // lands on the container's /tmp/esc, never on the guest's /tmp.
        let tag = format!("kata-e2e-esc-{}", std::process::id());
        std::os::unix::fs::symlink("/tmp", vol.join("evil")).unwrap();
        let dest = format!("/tmp/v/evil/{tag}");
        let s = spec(
            None,
            &format!("grep -c ' /tmp/{tag} ' /proc/mounts"),
            vec![
                bind(&vol, "/tmp/v"),
                mount_msg(&dest, "tmpfs", "tmpfs", &["size=1m"]),
            ],
        );
        pod.try_create("s2", s, vec![], vec![]).await.unwrap();
        let (code, out) = pod.run_init("s2").await;
        assert_eq!((code, out.trim()), (0, "1"));
        let guest = Path::new("/tmp").join(&tag);
        assert!(!guest.exists(), "{guest:?} created in the guest");
        assert!(!is_mounted(&guest));
        assert_victim_untouched(&victim);
        pod.remove("s2").await;
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

/// CVE-2021-30465, the race: while containers are created, another "container" keeps swapping
/// the bind source between a directory and a symlink to a guest directory (atomic exchange).
/// Each creation either binds the real directory or is refused; the guest directory never shows
/// up in a container.
#[test]
fn bind_source_swapped_during_creation_never_binds_the_symlink_target() {
    rt().block_on(async {
        let (pod, shared) = pod_with_share().await;
        let victim = victim(&pod);
        let vol = shared.join("race");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::write(vol.join("sub/marker"), "real\n").unwrap();
        std::os::unix::fs::symlink(&victim, vol.join("other")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, vol) = (stop.clone(), vol.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    nix::fcntl::renameat2(
                        None,
                        &vol.join("sub"),
                        None,
                        &vol.join("other"),
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .unwrap();
                    swaps += 1;
                }
                swaps
            })
        };
        let (mut bound, mut refused) = (0, 0);
        for i in 0..12 {
            let cid = format!("r{i}");
            let s = spec(
                None,
                "cat /tmp/x/marker /tmp/x/keep 2>/dev/null; true",
                vec![bind(&vol.join("sub"), "/tmp/x")],
            );
            match pod.try_create(&cid, s, vec![], vec![]).await {
                Ok(()) => {
                    let (_, out) = pod.run_init(&cid).await;
                    assert!(
                        !out.contains("precious"),
                        "the symlink target was bound: {out}"
                    );
                    bound += 1;
                    pod.remove(&cid).await;
                }
                Err(e) => {
                    let (code, msg) = status_of::<()>(Err(e));
                    assert!(
                        matches!(code, ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::INTERNAL),
                        "{code:?}: {msg}"
                    );
                    assert!(msg.contains("symlink") || msg.contains("source"), "{msg}");
                    refused += 1;
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(swapper.join().unwrap() > 0);
        assert_eq!(bound + refused, 12);
        assert_victim_untouched(&victim);
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

/// Replaces the /dev/null of a rootfs.
type MakeNull = Box<dyn FnOnce(&Path)>;

/// A private copy of the busybox rootfs whose /dev/null is replaced by `make`.
fn rootfs_with(pod: &Pod, name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let root = pod.agent.dir.path().join(name);
    sh(
        "cp",
        &[
            "-a",
            &e2e::rootfs().display().to_string(),
            &root.display().to_string(),
        ],
    );
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let _ = std::fs::remove_file(root.join("dev/null"));
    std::fs::write(root.join("etc/masked"), "private\n").unwrap();
    std::fs::write(root.join("etc/victim"), "victim\n").unwrap();
    make(&root);
    root
}

/// CVE-2025-31133 class: masked paths bind a /dev/null the engine made or checked, never an
/// image's symlink, regular file or other device.
#[test]
fn masked_paths_never_use_the_image_dev_null() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        pod.create_sandbox(vec![]).await.unwrap();
        let zero = libc::makedev(1, 5);
        let variants: Vec<(&str, MakeNull)> = vec![
            (
                "symlink",
                Box::new(|r: &Path| {
                    std::os::unix::fs::symlink("/etc/victim", r.join("dev/null")).unwrap()
                }),
            ),
            (
                "file",
                Box::new(|r: &Path| std::fs::write(r.join("dev/null"), "not null\n").unwrap()),
            ),
            (
                "zero",
                Box::new(move |r: &Path| {
                    nix::sys::stat::mknod(
                        &r.join("dev/null"),
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::from_bits_truncate(0o666),
                        zero,
                    )
                    .unwrap()
                }),
            ),
        ];
        for (i, (what, make)) in variants.into_iter().enumerate() {
            let root = rootfs_with(&pod, &format!("rootfs-{what}"), make);
            let mut s = spec(
                Some(&root),
                "cat /etc/masked; echo overwrite > /etc/masked; echo rc=$?",
                vec![],
            );
            // The image's /dev is used as it is (no tmpfs over it).
            s.Mounts.retain(|m| m.destination != "/dev");
            s.Linux.as_mut().unwrap().MaskedPaths = strs(&["/etc/masked"]);
            let cid = format!("m{i}");
            pod.try_create(&cid, s, vec![], vec![]).await.unwrap();
            let (code, out) = pod.run_init(&cid).await;
            assert_eq!((code, out.as_str()), (0, "rc=0\n"), "{what}");
            assert_eq!(
                std::fs::read_to_string(root.join("etc/victim")).unwrap(),
                "victim\n",
                "{what}"
            );
            assert_eq!(
                std::fs::read_to_string(root.join("etc/masked")).unwrap(),
                "private\n",
                "{what}"
            );
            pod.remove(&cid).await;
        }

        // A /dev provided by the spec with a bogus null: refused, nothing left mounted.
        let root = rootfs_with(&pod, "rootfs-devbind", |_| {});
        let devdir = pod.agent.dir.path().join("devdir");
        std::fs::create_dir_all(&devdir).unwrap();
        std::os::unix::fs::symlink("/etc/victim", devdir.join("null")).unwrap();
        let mut s = spec(Some(&root), "cat /etc/masked", vec![]);
        s.Mounts.retain(|m| m.destination != "/dev");
        s.Mounts.push(bind(&devdir, "/dev"));
        s.Linux.as_mut().unwrap().MaskedPaths = strs(&["/etc/masked"]);
        let (code, msg) = status_of(pod.try_create("m9", s, vec![], vec![]).await);
        assert_ne!(code, ttrpc::Code::OK);
        assert!(msg.contains("null device"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/victim")).unwrap(),
            "victim\n"
        );
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

async fn copy(
    pod: &Pod,
    path: &Path,
    mode: u32,
    size: i64,
    offset: i64,
    data: &[u8],
) -> ttrpc::Result<()> {
    let mut r = agent::CopyFileRequest::new();
    r.path = path.display().to_string();
    r.file_mode = mode;
    r.dir_mode = 0o755;
    r.file_size = size;
    r.offset = offset;
    r.data = data.to_vec();
    r.uid = -1;
    r.gid = -1;
    pod.c.copy_file(ctx(), &r).await.map(|_| ())
}

/// CopyFile never replaces (or empties) a directory that is or holds a mount, such as a
/// container's rootfs; offsets and sizes past the end are refused before anything is written.
#[test]
fn copy_file_never_removes_mounted_directories() {
    rt().block_on(async {
        let (pod, shared) = pod_with_share().await;
        let rootfs = shared.join("c1/rootfs");
        let holder = shared.join("c2");
        let storages = vec![
            storage("ephemeral", "tmpfs", "tmpfs", &rootfs, &[]),
            storage("ephemeral", "tmpfs", "tmpfs", &holder.join("inner"), &[]),
        ];
        pod.c
            .update_ephemeral_mounts(ctx(), &{
                let mut r = agent::UpdateEphemeralMountsRequest::new();
                r.storages = storages;
                r
            })
            .await
            .unwrap();
        std::fs::write(rootfs.join("bin"), "rootfs content\n").unwrap();
        std::fs::write(holder.join("inner/data"), "mounted content\n").unwrap();
        for target in [&rootfs, &holder] {
            for mode in [0o100644, libc::S_IFLNK | 0o777] {
                let msg = assert_code(
                    copy(&pod, target, mode, 1, 0, b"x").await,
                    ttrpc::Code::PERMISSION_DENIED,
                );
                assert!(msg.contains("mount"), "{msg}");
            }
        }
        assert_eq!(
            std::fs::read_to_string(rootfs.join("bin")).unwrap(),
            "rootfs content\n"
        );
        assert_eq!(
            std::fs::read_to_string(holder.join("inner/data")).unwrap(),
            "mounted content\n"
        );
        assert!(is_mounted(&rootfs) && is_mounted(&holder.join("inner")));
        assert!(holder.join("inner").is_dir());
        // Offsets and sizes that do not add up.
        let f = shared.join("c3/f");
        for (size, offset) in [(10, i64::MAX), (1, 1), (0, 0)] {
            assert_code(
                copy(&pod, &f, 0o100644, size, offset, b"xy").await,
                ttrpc::Code::INVALID_ARGUMENT,
            );
        }
        assert!(!f.exists());
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

/// fsGroup ownership changes walk the volume by descriptor: a symlink in it (to a file or a
/// directory outside) is skipped, its target untouched.
#[test]
fn fs_group_walk_skips_symlinks_out_of_the_volume() {
    rt().block_on(async {
        let (pod, shared) = pod_with_share().await;
        let victim = victim(&pod);
        let src = shared.join("g1-vol");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), "x").unwrap();
        std::os::unix::fs::symlink(&victim, src.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(victim.join("keep"), src.join("filelink")).unwrap();
        let mp = pod.run_dir().join("sandbox/storage/g1");
        let mut st = storage(
            "virtio-fs",
            &src.display().to_string(),
            "bind",
            &mp,
            &["bind"],
        );
        let mut g = FSGroup::new();
        g.group_id = 4242;
        g.group_change_policy = FSGroupChangePolicy::Always.into();
        st.fs_group = MessageField::some(g);
        pod.try_create("g1", spec(None, "true", vec![]), vec![st], vec![])
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(src.join("sub/f")).unwrap().gid(), 4242);
        assert_victim_untouched(&victim);
        assert_eq!(std::fs::metadata(victim.join("keep")).unwrap().gid(), 0);
        pod.remove("g1").await;
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

/// WriteStdin to a process that never reads: the queue is bounded, past it RESOURCE_EXHAUSTED.
#[test]
fn queued_stdin_is_bounded() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        pod.create_sandbox(vec![]).await.unwrap();
        pod.try_create("i1", spec(None, "sleep 1000", vec![]), vec![], vec![])
            .await
            .unwrap();
        pod.start("i1").await;
        let chunk = vec![b'x'; 1 << 20];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // 12 MiB for a process that reads nothing: every write waits, except those past the
        // bound, which are refused at once.
        for _ in 0..12 {
            let c = pod.c.clone();
            let data = chunk.clone();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut req = agent::WriteStreamRequest::new();
                req.container_id = "i1".into();
                req.data = data;
                let r = c.write_stdin(ctx(), &req).await;
                let _ = tx.send(match &r {
                    Err(ttrpc::Error::RpcStatus(s)) => Some((s.code(), s.message().to_string())),
                    _ => None,
                });
            }));
        }
        // The first answer is a refusal: the accepted writes wait for a reader.
        let first = rx.recv().await.unwrap();
        let exhausted = match first {
            Some((ttrpc::Code::RESOURCE_EXHAUSTED, m)) => Some(m),
            other => panic!("expected RESOURCE_EXHAUSTED first, got {other:?}"),
        };
        let msg = exhausted.expect("12 MiB of unread stdin were all queued");
        assert!(msg.contains("stdin"), "{msg}");
        // The process goes: the queued writes end (with an error), the agent stays usable.
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = "i1".into();
        req.signal = libc::SIGKILL as u32;
        pod.c.signal_process(ctx(), &req).await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        pod.remove("i1").await;
        pod.destroy_sandbox().await;
    });
}

/// A storage whose request is cancelled (timeout) while it is being mounted is still recorded,
/// so DestroySandbox unmounts it.
#[test]
fn storage_of_a_cancelled_request_is_torn_down() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let lo = LoopDev::new(pod.agent.dir.path(), "slow", 1024);
        let vol = pod.run_dir().join("sandbox/storage/slow");
        let mut st = storage("blk", &lo.dev.display().to_string(), "ext4", &vol, &[]);
        st.driver_options = strs(&["create_filesystem"]);
        let mut req = agent::CreateSandboxRequest::new();
        req.sandbox_id = "sb".into();
        req.storages = vec![st];
        let short = ttrpc::context::with_timeout(Duration::from_millis(100).as_nanos() as i64);
        let _ = pod.c.create_sandbox(short, &req).await;
        eventually(120, "the cancelled storage finishes mounting", || {
            is_mounted(&vol)
        })
        .await;
        pod.destroy_sandbox().await;
        assert!(!is_mounted(&vol));
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
    });
}

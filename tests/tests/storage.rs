//! End-to-end tests of storages and the guest's volume operations through the real agent:
//! block volumes on loop devices, overlay/tmpfs/local storages shared by containers, the
//! watchable-bind copier, CopyFile, volume stats and resize, swap, and the clean-up guarantees
//! (nothing mounted below the run directory after RemoveContainer and DestroySandbox).

mod storage_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use e2e::{ctx, AgentOptions, TestAgent};
use protobuf::MessageField;
use protocols::agent::{self, FSGroup};
use protocols::csi::volume_usage::Unit;
use protocols::types::FSGroupChangePolicy;
use storage_support::*;

fn fs_group(gid: u32, policy: FSGroupChangePolicy) -> MessageField<FSGroup> {
    let mut g = FSGroup::new();
    g.group_id = gid;
    g.group_change_policy = policy.into();
    MessageField::some(g)
}

fn mount_source(mount_point: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mp = pre.split(' ').nth(4)?;
        let mut g = post.split(' ');
        (Path::new(mp) == mount_point)
            .then(|| (g.next().unwrap().to_string(), g.next().unwrap().to_string()))
    })
}

async fn volume_stats(
    pod: &Pod,
    path: &Path,
) -> ttrpc::Result<protocols::csi::VolumeStatsResponse> {
    let mut req = agent::VolumeStatsRequest::new();
    req.volume_guest_path = path.display().to_string();
    pod.c.get_volume_stats(ctx(), &req).await
}

async fn resize(pod: &Pod, path: &Path, size: u64) -> ttrpc::Result<()> {
    let mut req = agent::ResizeVolumeRequest::new();
    req.volume_guest_path = path.display().to_string();
    req.size = size;
    pod.c.resize_volume(ctx(), &req).await.map(|_| ())
}

#[test]
fn ext4_block_volume_on_a_loop_device_in_a_running_container() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let lo = LoopDev::new(pod.agent.dir.path(), "vol", 64);
        pod.create_sandbox(vec![]).await.unwrap();
        let vol = pod.run_dir().join("sandbox/storage/vol");
        let mut st = storage(
            "blk",
            &lo.dev.display().to_string(),
            "ext4",
            &vol,
            &["nodev"],
        );
        st.driver_options = strs(&["create_filesystem"]);
        st.fs_group = fs_group(1234, FSGroupChangePolicy::OnRootMismatch);
        let spec = spec(None, "sleep 1000", vec![bind(&vol, "/tmp/data")]);
        pod.try_create("c1", spec, vec![st], vec![]).await.unwrap();
        assert_eq!(
            mount_source(&vol),
            Some(("ext4".to_string(), lo.dev.display().to_string()))
        );
        pod.start("c1").await;
        let (code, out) = pod
            .exec(
                "c1",
                "e1",
                "echo hello > /tmp/data/f && cat /tmp/data/f && stat -c %g /tmp/data && \
                 grep ' /tmp/data ' /proc/mounts | cut -d' ' -f3",
            )
            .await;
        assert_eq!((code, out.as_str()), (0, "hello\n1234\next4\n"));

        // Volume statistics: bytes and inodes of the ext4 file system.
        let stats = volume_stats(&pod, &vol).await.unwrap();
        assert_eq!(stats.usage.len(), 2);
        let bytes = &stats.usage[0];
        assert_eq!(bytes.unit.enum_value(), Ok(Unit::BYTES));
        assert!(
            bytes.total > 40 << 20 && bytes.total <= 64 << 20,
            "{bytes:?}"
        );
        assert!(bytes.used > 0 && bytes.available > 0 && bytes.available < bytes.total);
        let inodes = &stats.usage[1];
        assert_eq!(inodes.unit.enum_value(), Ok(Unit::INODES));
        assert!(
            inodes.used >= 11 && inodes.total > inodes.used,
            "{inodes:?}"
        );
        assert_eq!(stats.volume_condition.message, "OK");

        // The host grows the disk; ResizeVolume grows the file system online (ext4's online
        // resize needs CAP_SYS_RESOURCE, which a guest agent has but some test hosts lack).
        lo.grow(128);
        let msg = assert_code(
            resize(&pod, &vol, 1 << 30).await,
            ttrpc::Code::FAILED_PRECONDITION,
        );
        assert!(msg.contains("less than the requested"), "{msg}");
        if has_cap_sys_resource() {
            resize(&pod, &vol, 0).await.unwrap();
            let bytes = volume_stats(&pod, &vol).await.unwrap().usage[0].total;
            assert!(bytes > 100 << 20, "{bytes}");
        } else {
            let msg = assert_code(resize(&pod, &vol, 0).await, ttrpc::Code::INTERNAL);
            assert!(
                msg.contains("resize2fs") && msg.contains("Permission denied"),
                "{msg}"
            );
        }
        let (_, out) = pod.exec("c1", "e2", "cat /tmp/data/f").await;
        assert_eq!(out, "hello\n");

        // Paths outside the storage root are refused.
        let out = pod.agent.dir.path().join("outside");
        assert_code(
            volume_stats(&pod, &out).await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert_code(
            resize(&pod, Path::new("/"), 0).await,
            ttrpc::Code::INVALID_ARGUMENT,
        );

        pod.remove("c1").await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
        assert!(!vol.exists());
        pod.destroy_sandbox().await;
    });
}

fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0) // CAP_SYS_RESOURCE
}

#[test]
fn xfs_block_volume_grows_online() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        // xfs needs at least 300 MiB; the file is sparse.
        let lo = LoopDev::new(pod.agent.dir.path(), "xfs", 320);
        sh("mkfs.xfs", &["-q", "-f", &lo.dev.display().to_string()]);
        let vol = pod.run_dir().join("sandbox/storage/xfs");
        // create_filesystem is for ext4 only.
        let mut st = storage("blk", &lo.dev.display().to_string(), "xfs", &vol, &[]);
        st.driver_options = strs(&["create_filesystem"]);
        let msg = assert_code(
            pod.create_sandbox(vec![st.clone()]).await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(msg.contains("only ext4"), "{msg}");
        assert!(!vol.exists());
        st.driver_options.clear();
        pod.create_sandbox(vec![st]).await.unwrap();
        let before = volume_stats(&pod, &vol).await.unwrap().usage[0].total;
        lo.grow(400);
        resize(&pod, &vol, 360 << 20).await.unwrap();
        let mid = volume_stats(&pod, &vol).await.unwrap().usage[0].total;
        assert!(mid > before && mid <= 360 << 20, "{before} -> {mid}");
        resize(&pod, &vol, 0).await.unwrap();
        let after = volume_stats(&pod, &vol).await.unwrap().usage[0].total;
        assert!(after > mid, "{mid} -> {after}");
        // A volume that is not a mount, or of a kind that cannot grow.
        let plain = pod.run_dir().join("sandbox/plain");
        std::fs::create_dir_all(&plain).unwrap();
        assert_code(
            resize(&pod, &plain, 0).await,
            ttrpc::Code::FAILED_PRECONDITION,
        );
        let tmp = pod.run_dir().join("sandbox/ephemeral/t");
        pod.create_sandbox(vec![storage("ephemeral", "tmpfs", "tmpfs", &tmp, &[])])
            .await
            .unwrap();
        let msg = assert_code(resize(&pod, &tmp, 0).await, ttrpc::Code::UNIMPLEMENTED);
        assert!(msg.contains("tmpfs"), "{msg}");
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
    });
}

#[test]
fn overlay_and_tmpfs_storages_shared_by_two_containers() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        pod.create_sandbox(vec![]).await.unwrap();
        let run = pod.run_dir();
        let layers = run.join("shared/containers/layers");
        for d in ["lower", "upper", "work"] {
            std::fs::create_dir_all(layers.join(d)).unwrap();
        }
        std::fs::write(
            layers.join("lower/greeting"),
            "hello from the lower layer\n",
        )
        .unwrap();
        let ovl = run.join("sandbox/ovl");
        let scratch = run.join("sandbox/ephemeral/scratch");
        let storages = || {
            vec![
                storage(
                    "overlayfs",
                    "overlay",
                    "overlay",
                    &ovl,
                    &[
                        &format!("lowerdir={}", layers.join("lower").display()),
                        &format!("upperdir={}", layers.join("upper").display()),
                        &format!("workdir={}", layers.join("work").display()),
                    ],
                ),
                storage(
                    "ephemeral",
                    "tmpfs",
                    "tmpfs",
                    &scratch,
                    &["size=4m", "mode=1777"],
                ),
            ]
        };
        let mounts = || vec![bind(&ovl, "/tmp/ovl"), bind(&scratch, "/tmp/scratch")];
        for cid in ["c1", "c2"] {
            pod.try_create(cid, spec(None, "sleep 1000", mounts()), storages(), vec![])
                .await
                .unwrap();
            pod.start(cid).await;
        }
        let (code, _) = pod
            .exec(
                "c1",
                "w",
                "echo from-c1 > /tmp/scratch/x && echo new > /tmp/ovl/added",
            )
            .await;
        assert_eq!(code, 0);
        let (_, out) = pod
            .exec(
                "c2",
                "r",
                "cat /tmp/scratch/x /tmp/ovl/greeting /tmp/ovl/added",
            )
            .await;
        assert_eq!(out, "from-c1\nhello from the lower layer\nnew\n");
        assert_eq!(
            std::fs::read_to_string(layers.join("upper/added")).unwrap(),
            "new\n"
        );
        assert_eq!(mount_source(&scratch).unwrap().0, "tmpfs");
        let size = nix::sys::statvfs::statvfs(&scratch).unwrap();
        assert_eq!(size.blocks() * size.fragment_size(), 4 << 20);

        // The first container goes: both storages stay for the second one.
        pod.remove("c1").await;
        let m = pod.mounts();
        assert!(m.iter().any(|p| Path::new(p) == ovl), "{m:?}");
        assert!(m.iter().any(|p| Path::new(p) == scratch), "{m:?}");
        let (_, out) = pod.exec("c2", "r2", "cat /tmp/scratch/x").await;
        assert_eq!(out, "from-c1\n");

        // The last one goes: both are unmounted and their mount points removed.
        pod.remove("c2").await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
        assert!(!ovl.exists() && !scratch.exists());
        assert!(!run.join("sandbox/ephemeral").exists());
        // The layers belong to the host: untouched.
        assert!(layers.join("upper/added").exists());
        pod.destroy_sandbox().await;
    });
}

/// A pod as a Kata runtime sets it up: the shared file system (virtio-fs in a VM; a tmpfs here,
/// mounted by the same driver), the container rootfs in it, an emptyDir, a block volume and a
/// ConfigMap through watchable-bind. Everything is gone after RemoveContainer and DestroySandbox.
#[test]
fn typical_pod_storages_and_teardown() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let run = pod.run_dir();
        let shared = run.join("shared/containers");
        let share = storage("virtio-fs", "kataShared", "tmpfs", &shared, &["nodev"]);
        pod.create_sandbox(vec![share]).await.unwrap();
        assert_eq!(mount_source(&shared).unwrap(), ("tmpfs".into(), "kataShared".into()));

        // What the host puts in the share: the container rootfs and a ConfigMap.
        let rootfs_dir = shared.join("c1/rootfs");
        std::fs::create_dir_all(&rootfs_dir).unwrap();
        sh("mount", &["--bind", &e2e::rootfs().display().to_string(), &rootfs_dir.display().to_string()]);
        let cm = shared.join("c1-cm");
        std::fs::create_dir_all(cm.join("sub")).unwrap();
        std::fs::write(cm.join("key"), "v1\n").unwrap();
        std::fs::write(cm.join("sub/other"), "o\n").unwrap();
        std::os::unix::fs::symlink("key", cm.join("alias")).unwrap();
        std::fs::create_dir_all(shared.join("watchable")).unwrap();

        let lo = LoopDev::new(pod.agent.dir.path(), "pvc", 32);
        let empty_dir = run.join("sandbox/ephemeral/cache");
        let block = run.join("sandbox/storage/pvc");
        let cm_target = shared.join("watchable/c1-cm");
        let mut blk = storage("blk", &lo.dev.display().to_string(), "ext4", &block, &[]);
        blk.driver_options = strs(&["create_filesystem"]);
        let storages = vec![
            storage("ephemeral", "tmpfs", "tmpfs", &empty_dir, &["fsgid=2000"]),
            blk,
            storage("watchable-bind", &cm.display().to_string(), "bind", &cm_target, &["bind", "ro"]),
        ];
        let spec = spec(
            Some(&rootfs_dir),
            "sleep 1000",
            vec![
                bind(&empty_dir, "/tmp/cache"),
                bind(&block, "/tmp/data"),
                bind(&cm_target, "/tmp/config"),
            ],
        );
        pod.try_create("c1", spec, storages, vec![]).await.unwrap();
        pod.start("c1").await;
        let meta = std::fs::metadata(&empty_dir).unwrap();
        assert_eq!(meta.gid(), 2000);
        assert_eq!(meta.mode() & 0o2000, 0o2000);
        let (code, out) = pod
            .exec(
                "c1",
                "e1",
                "echo x > /tmp/cache/x && echo y > /tmp/data/y && cat /tmp/config/key /tmp/config/sub/other /tmp/config/alias && readlink /tmp/config/alias",
            )
            .await;
        assert_eq!((code, out.as_str()), (0, "v1\no\nv1\nkey\n"));

        // The ConfigMap changes on the host: the copy follows.
        std::fs::write(cm.join("key"), "v2\n").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let later = nix::sys::time::TimeSpec::new(now + 10, 0);
        nix::sys::stat::utimensat(None, &cm.join("key"), &later, &later, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
        std::fs::remove_file(cm.join("sub/other")).unwrap();
        std::fs::write(cm.join("new"), "n\n").unwrap();
        eventually(20, "the watcher copies the updated ConfigMap", || {
            std::fs::read_to_string(cm_target.join("key")).ok().as_deref() == Some("v2\n")
                && cm_target.join("new").exists()
                && !cm_target.join("sub/other").exists()
        })
        .await;
        let (_, out) = pod.exec("c1", "e2", "cat /tmp/config/key /tmp/config/new").await;
        assert_eq!(out, "v2\nn\n");

        pod.remove("c1").await;
        // The watched copy is gone; the share stays (it is the sandbox's) until DestroySandbox.
        assert!(!cm_target.exists());
        sh("umount", &[&rootfs_dir.display().to_string()]);
        let left = pod.mounts();
        assert_eq!(left.len(), 2, "{left:?}"); // the share and the watchable tmpfs
        assert!(!empty_dir.exists() && !block.exists());
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
    });
}

#[test]
fn watchable_source_too_big_to_copy_is_bind_mounted() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        pod.create_sandbox(vec![]).await.unwrap();
        let shared = pod.run_dir().join("shared/containers");
        let src = shared.join("many");
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(format!("f{i}")), format!("{i}\n")).unwrap();
        }
        let target = shared.join("watchable/many");
        let st = storage(
            "watchable-bind",
            &src.display().to_string(),
            "bind",
            &target,
            &[],
        );
        pod.try_create(
            "c1",
            spec(None, "sleep 1000", vec![bind(&target, "/tmp/many")]),
            vec![st],
            vec![],
        )
        .await
        .unwrap();
        assert!(
            pod.mounts().iter().any(|m| Path::new(m) == target),
            "{:?}",
            pod.mounts()
        );
        pod.start("c1").await;
        let (_, out) = pod
            .exec("c1", "e", "ls /tmp/many | wc -l; cat /tmp/many/f19")
            .await;
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec!["20", "19"]);
        // A watchable mount point elsewhere is refused.
        let bad = storage(
            "watchable-bind",
            &src.display().to_string(),
            "bind",
            &shared.join("x/y"),
            &[],
        );
        let msg = assert_code(
            pod.try_create("c2", spec(None, "true", vec![]), vec![bad], vec![])
                .await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(msg.contains("watchable"), "{msg}");
        pod.remove("c1").await;
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
    });
}

#[test]
fn bad_storages_are_refused_and_failures_roll_back() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let run = pod.run_dir();
        let outside = pod.agent.dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();

        // Unknown driver: INVALID_ARGUMENT naming it, nothing created.
        let msg = assert_code(
            pod.create_sandbox(vec![storage(
                "zfs",
                "tank",
                "zfs",
                &run.join("sandbox/z"),
                &[],
            )])
            .await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(msg.contains("\"zfs\""), "{msg}");
        // 9p is supported (the Go runtime sends it); here it fails only for lack of a 9p device.
        let (code, msg) = status_of(
            pod.create_sandbox(vec![storage(
                "9p",
                "kataShared",
                "9p",
                &run.join("shared/containers"),
                &["trans=virtio"],
            )])
            .await,
        );
        assert_eq!(code, ttrpc::Code::INTERNAL, "{msg}");
        assert!(!run.join("shared/containers").exists());

        // Mount points and sources outside the run directory, or escaping it.
        std::fs::create_dir_all(run.join("sandbox")).unwrap();
        std::os::unix::fs::symlink(&outside, run.join("sandbox/escape")).unwrap();
        std::os::unix::fs::symlink("../../outside", run.join("sandbox/rel-escape")).unwrap();
        for (st, what) in [
            (
                storage("ephemeral", "tmpfs", "tmpfs", &outside.join("t"), &[]),
                "outside",
            ),
            (
                storage(
                    "ephemeral",
                    "tmpfs",
                    "tmpfs",
                    Path::new(&format!("{}/sandbox/../../outside/t", run.display())),
                    &[],
                ),
                "..",
            ),
            (
                storage("local", "", "", Path::new("sandbox/relative"), &[]),
                "absolute",
            ),
            (
                storage(
                    "ephemeral",
                    "tmpfs",
                    "tmpfs",
                    &run.join("sandbox/escape/t"),
                    &[],
                ),
                "symlink",
            ),
            (
                storage("local", "", "", &run.join("sandbox/rel-escape/t"), &[]),
                "symlink",
            ),
            (
                storage(
                    "virtio-fs",
                    &outside.display().to_string(),
                    "bind",
                    &run.join("sandbox/b"),
                    &["bind"],
                ),
                "outside",
            ),
            (
                storage(
                    "ephemeral",
                    "tmpfs",
                    "tmpfs",
                    &run.join("sandbox/l"),
                    &["loop"],
                ),
                "loop",
            ),
        ] {
            let msg = assert_code(
                pod.create_sandbox(vec![st]).await,
                ttrpc::Code::INVALID_ARGUMENT,
            );
            assert!(msg.contains(what), "{what}: {msg}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        // A failing storage rolls back the ones before it.
        let good = run.join("sandbox/ephemeral/a");
        let local = run.join("sandbox/local/b");
        let list = vec![
            storage("ephemeral", "tmpfs", "tmpfs", &good, &[]),
            storage("local", "", "", &local, &["mode=0770"]),
            storage(
                "blk",
                "/dev/kata-no-such-disk",
                "ext4",
                &run.join("sandbox/storage/c"),
                &[],
            ),
        ];
        let msg = assert_code(
            pod.try_create("c1", spec(None, "true", vec![]), list.clone(), vec![])
                .await,
            ttrpc::Code::NOT_FOUND,
        );
        assert!(msg.contains("/dev/kata-no-such-disk"), "{msg}");
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
        assert!(!good.exists() && !local.exists());

        // Storages ready but the container cannot be created: released again.
        let missing_root = pod.agent.dir.path().join("no-such-rootfs");
        let bad_spec = spec(Some(&missing_root), "true", vec![]);
        let _ = status_of(
            pod.try_create("c2", bad_spec, list[..2].to_vec(), vec![])
                .await,
        );
        assert!(pod.mounts().is_empty(), "{:?}", pod.mounts());
        assert!(!good.exists() && !local.exists());

        // local storages: mode and group, removed with their container.
        let mut st = storage("local", "", "", &local, &["mode=0750", "fsgid=3000"]);
        st.fs_group = MessageField::none();
        pod.try_create("c3", spec(None, "true", vec![]), vec![st], vec![])
            .await
            .unwrap();
        let meta = std::fs::metadata(&local).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o2750, 3000));
        std::fs::write(local.join("data"), "x").unwrap();
        pod.remove("c3").await;
        assert!(!local.exists() && !run.join("sandbox/local").exists());
        pod.destroy_sandbox().await;
    });
}

#[test]
fn shared_storage_outlives_its_containers_until_the_sandbox_goes() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        pod.create_sandbox(vec![]).await.unwrap();
        let mp = pod.run_dir().join("sandbox/ephemeral/shm");
        let mut st = storage("ephemeral", "tmpfs", "tmpfs", &mp, &[]);
        st.shared = true;
        pod.try_create("c1", spec(None, "true", vec![]), vec![st.clone()], vec![])
            .await
            .unwrap();
        pod.remove("c1").await;
        assert_eq!(pod.mounts(), vec![mp.display().to_string()]);
        // A later container takes it again, without a second mount.
        pod.try_create("c2", spec(None, "true", vec![]), vec![st], vec![])
            .await
            .unwrap();
        let here = |m: &Vec<String>| m.iter().filter(|p| Path::new(p) == mp).count();
        assert_eq!(here(&pod.mounts()), 1);
        pod.remove("c2").await;
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
        assert!(!mp.exists());
    });
}

#[test]
fn update_ephemeral_mounts_resizes_a_tmpfs() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let mp = pod.run_dir().join("sandbox/ephemeral/mem");
        pod.create_sandbox(vec![storage(
            "ephemeral",
            "tmpfs",
            "tmpfs",
            &mp,
            &["size=1m"],
        )])
        .await
        .unwrap();
        let size = |p: &Path| {
            let s = nix::sys::statvfs::statvfs(p).unwrap();
            s.blocks() * s.fragment_size()
        };
        assert_eq!(size(&mp), 1 << 20);
        let mut req = agent::UpdateEphemeralMountsRequest::new();
        req.storages = vec![storage(
            "ephemeral",
            "tmpfs",
            "tmpfs",
            &mp,
            &["remount", "size=2m", "fsgid=5"],
        )];
        pod.c.update_ephemeral_mounts(ctx(), &req).await.unwrap();
        assert_eq!(size(&mp), 2 << 20);
        assert_eq!(pod.mounts().len(), 1, "remounted, not stacked");
        req.storages = vec![storage("local", "", "", &mp, &[])];
        let msg = assert_code(
            pod.c.update_ephemeral_mounts(ctx(), &req).await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(msg.contains("ephemeral"), "{msg}");
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
    });
}

#[test]
fn hugetlbfs_storage_reserves_pages() {
    rt().block_on(async {
        // A synthetic sysfs: the reservation is written there, the mount is real.
        let sys = tempfile::tempdir().unwrap();
        let pages = sys.path().join("kernel/mm/hugepages/hugepages-2048kB");
        std::fs::create_dir_all(&pages).unwrap();
        std::fs::write(pages.join("nr_hugepages"), "0\n").unwrap();
        let pod = Pod::new(TestAgent::start_with(AgentOptions {
            env: vec![("KATA_AGENT_SYSFS", sys.path().display().to_string())],
            ..Default::default()
        }))
        .await;
        let mp = pod.run_dir().join("sandbox/ephemeral/huge");
        pod.create_sandbox(vec![storage(
            "ephemeral",
            "nodev",
            "hugetlbfs",
            &mp,
            &["pagesize=2097152", "size=4194304"],
        )])
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(pages.join("nr_hugepages")).unwrap(),
            "2"
        );
        assert_eq!(mount_source(&mp).unwrap().0, "hugetlbfs");
        let bad = storage(
            "ephemeral",
            "nodev",
            "hugetlbfs",
            &pod.run_dir().join("sandbox/h2"),
            &["size=1"],
        );
        let msg = assert_code(
            pod.create_sandbox(vec![bad]).await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(msg.contains("pagesize"), "{msg}");
        pod.destroy_sandbox().await;
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
    });
}

async fn copy(
    pod: &Pod,
    path: &str,
    mode: u32,
    size: i64,
    offset: i64,
    data: &[u8],
) -> ttrpc::Result<()> {
    let mut r = agent::CopyFileRequest::new();
    r.path = path.into();
    r.file_mode = mode;
    r.dir_mode = 0o750;
    r.file_size = size;
    r.offset = offset;
    r.data = data.to_vec();
    r.uid = 1001;
    r.gid = 1002;
    pod.c.copy_file(ctx(), &r).await.map(|_| ())
}

#[test]
fn copy_file_round_trip_and_hostile_paths() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let shared = pod.run_dir().join("shared/containers");
        let p = |rel: &str| format!("{}/{rel}", shared.display());
        // A file in two chunks: invisible until complete, then atomically in place.
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        copy(
            &pod,
            &p("c1/etc/app.json"),
            0o100640,
            data.len() as i64,
            0,
            &data[..60_000],
        )
        .await
        .unwrap();
        assert!(!Path::new(&p("c1/etc/app.json")).exists());
        copy(
            &pod,
            &p("c1/etc/app.json"),
            0o100640,
            data.len() as i64,
            60_000,
            &data[60_000..],
        )
        .await
        .unwrap();
        let f = Path::new(&p("c1/etc/app.json")).to_path_buf();
        assert_eq!(std::fs::read(&f).unwrap(), data);
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o640, 1001, 1002)
        );
        let parent = std::fs::metadata(f.parent().unwrap()).unwrap();
        assert_eq!(
            (parent.permissions().mode() & 0o777, parent.uid()),
            (0o750, 1001)
        );
        assert_eq!(
            std::fs::read_dir(f.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
        // Replacing it: readers see the old or the new content only.
        copy(&pod, &p("c1/etc/app.json"), 0o100600, 3, 0, b"new")
            .await
            .unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
        // A directory and a symlink.
        copy(&pod, &p("c1/d"), libc::S_IFDIR | 0o2775, 0, 0, b"")
            .await
            .unwrap();
        assert_eq!(
            std::fs::metadata(p("c1/d")).unwrap().mode() & 0o7777,
            0o2775
        );
        copy(&pod, &p("c1/..data"), libc::S_IFLNK | 0o777, 0, 0, b"etc")
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_link(p("c1/..data")).unwrap(),
            Path::new("etc")
        );
        let l = std::fs::symlink_metadata(p("c1/..data")).unwrap();
        assert_eq!((l.uid(), l.gid()), (1001, 1002));
        // An existing symlink at the target is replaced, never followed.
        let victim = pod.agent.dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, p("c1/trap")).unwrap();
        copy(&pod, &p("c1/trap"), 0o100644, 1, 0, b"x")
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read(p("c1/trap")).unwrap(), b"x");

        // Hostile paths: INVALID_ARGUMENT and nothing written anywhere.
        let outside = pod.agent.dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, p("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../../outside", p("rel-link")).unwrap();
        let hostile = [
            "relative/file".to_string(),
            format!("{}/x", outside.display()),
            p("c1/../../../outside/x"),
            format!("{}-evil/x", shared.display()),
            shared.display().to_string(),
            p("abs-link/x"),
            p("rel-link/x"),
            p("rel-link/deeper/x"),
            p("c1/bad\0name"),
        ];
        for h in &hostile {
            let msg = assert_code(
                copy(&pod, h, 0o100644, 1, 0, b"x").await,
                ttrpc::Code::INVALID_ARGUMENT,
            );
            assert!(!msg.is_empty());
            let msg = assert_code(
                copy(&pod, h, libc::S_IFDIR | 0o755, 0, 0, b"").await,
                ttrpc::Code::INVALID_ARGUMENT,
            );
            assert!(!msg.is_empty());
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!Path::new(&format!("{}-evil", shared.display())).exists());
        // Bad chunking and file types.
        assert_code(
            copy(&pod, &p("c1/gap"), 0o100644, 10, 4, b"x").await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert_code(
            copy(&pod, &p("c1/big"), 0o100644, 1, 0, b"xy").await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert_code(
            copy(&pod, &p("c1/fifo"), libc::S_IFIFO | 0o644, 0, 0, b"").await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(!Path::new(&p("c1/big")).exists());
    });
}

#[test]
fn swap_on_a_device_and_on_a_file() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let lo = LoopDev::new(pod.agent.dir.path(), "swapdev", 16);
        sh("mkswap", &[&lo.dev.display().to_string()]);
        let mut req = agent::AddSwapPathRequest::new();
        req.path = lo.dev.display().to_string();
        pod.c.add_swap_path(ctx(), &req).await.unwrap();
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
        assert!(swaps.contains(&lo.dev.display().to_string()), "{swaps}");
        sh("swapoff", &[&lo.dev.display().to_string()]);

        // A swap file below the run directory.
        let file = pod.run_dir().join("sandbox/swapfile");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        // Swap files need allocated blocks: write them out.
        sh(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", file.display()),
                "bs=1M",
                "count=16",
                "status=none",
            ],
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        sh("mkswap", &[&file.display().to_string()]);
        req.path = file.display().to_string();
        pod.c.add_swap_path(ctx(), &req).await.unwrap();
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
        let _ = std::process::Command::new("swapoff").arg(&file).status();
        assert!(swaps.contains(&file.display().to_string()), "{swaps}");

        // Not a swap area, or not allowed.
        req.path = "/etc/passwd".into();
        assert_code(
            pod.c.add_swap_path(ctx(), &req).await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        let plain = pod.run_dir().join("sandbox/plain");
        std::fs::write(&plain, "not swap").unwrap();
        req.path = plain.display().to_string();
        let msg = assert_code(
            pod.c.add_swap_path(ctx(), &req).await,
            ttrpc::Code::INTERNAL,
        );
        assert!(msg.contains("swap"), "{msg}");
    });
}

/// A layered container rootfs: an overlayfs storage mounted straight on the container's bundle
/// rootfs, in its rw form (upper and work directories made by the agent for the container).
#[test]
fn layered_rootfs_through_a_rw_overlay_storage() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        pod.create_sandbox(vec![]).await.unwrap();
        let run = pod.run_dir();
        // The host shares the image layer.
        let lower = run.join("shared/containers/image/lower");
        std::fs::create_dir_all(&lower).unwrap();
        sh(
            "mount",
            &[
                "--bind",
                "-o",
                "ro",
                &e2e::rootfs().display().to_string(),
                &lower.display().to_string(),
            ],
        );
        let rootfs = run.join("c1/rootfs");
        let st = storage(
            "overlayfs",
            "overlay",
            "overlay",
            &rootfs,
            &[
                &format!("lowerdir={}", lower.display()),
                "io.katacontainers.fs-opt.overlay-rw",
            ],
        );
        let mut s = spec(
            Some(&rootfs),
            "echo written > /written-by-c1 && cat /written-by-c1",
            vec![],
        );
        s.Root.as_mut().unwrap().Readonly = false;
        pod.try_create("c1", s, vec![st.clone()], vec![])
            .await
            .unwrap();
        let (code, out) = pod.run_init("c1").await;
        assert_eq!((code, out.as_str()), (0, "written\n"));
        assert_eq!(
            std::fs::read_to_string(run.join("c1/upper/written-by-c1")).unwrap(),
            "written\n"
        );
        assert!(!lower.join("written-by-c1").exists());
        pod.remove("c1").await;
        assert!(
            !run.join("c1").exists(),
            "the container's directory is left"
        );
        sh("umount", &[&lower.display().to_string()]);
        assert!(pod.mounts().is_empty(), "left mounted: {:?}", pod.mounts());
        // The rw form needs a container.
        let msg = assert_code(
            pod.create_sandbox(vec![st]).await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(msg.contains("container"), "{msg}");
        pod.destroy_sandbox().await;
    });
}

/// A share the guest already mounted (kataShared) is used as it is, and left to its owner.
#[test]
fn pre_mounted_share_is_used_as_is() {
    rt().block_on(async {
        let pod = Pod::new(TestAgent::start()).await;
        let shared = pod.run_dir().join("shared/containers");
        std::fs::create_dir_all(&shared).unwrap();
        sh(
            "mount",
            &["-t", "tmpfs", "premounted", &shared.display().to_string()],
        );
        let share = storage("virtio-fs", "kataShared", "virtiofs", &shared, &["nodev"]);
        pod.create_sandbox(vec![share]).await.unwrap();
        assert_eq!(mount_source(&shared).unwrap().1, "premounted");
        assert_eq!(pod.mounts().len(), 1);
        pod.destroy_sandbox().await;
        assert_eq!(
            pod.mounts().len(),
            1,
            "the agent unmounted what it did not mount"
        );
        sh("umount", &[&shared.display().to_string()]);
    });
}

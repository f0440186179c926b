use super::*;
use protocols::agent::{
    CopyFileRequest, CreateContainerRequest, ExecProcessRequest, ReadStreamRequest, Storage,
};
use protocols::oci::{LinuxSyscall, Mount};
use serde_json::{json, Value as Json};

/// Requests in upstream's policy input form (tests/data/policy/upstream-form.json).
const UPSTREAM_FORM: &str = include_str!("../../../../tests/data/policy/upstream-form.json");

fn to_json(v: &Value) -> Json {
    serde_json::to_value(v).unwrap()
}

/// Every key and value of `expected` is in `actual` (upstream's samples leave some fields out).
fn assert_contains(path: &str, actual: &Json, expected: &Json) {
    match (actual, expected) {
        (Json::Object(a), Json::Object(e)) => {
            for (k, ev) in e {
                let av = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing from the input: {actual}"));
                assert_contains(&format!("{path}.{k}"), av, ev);
            }
        }
        (Json::Array(a), Json::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{path}: array length");
            for (i, (av, ev)) in a.iter().zip(e).enumerate() {
                assert_contains(&format!("{path}[{i}]"), av, ev);
            }
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

fn upstream(name: &str) -> Json {
    let all: Json = serde_json::from_str(UPSTREAM_FORM).unwrap();
    all[name].clone()
}

#[test]
fn create_container_matches_upstream_form() {
    let expected = upstream("CreateContainerRequest");
    // Our serde accepts the upstream keys (`type_` as an alias of `type`).
    let req: CreateContainerRequest = serde_json::from_value(expected.clone()).unwrap();
    let actual = to_json(&message_input(&req));
    assert_contains("input", &actual, &expected);
    // Fields the sample leaves out are present too, with their empty values.
    assert_eq!(actual["OCI"]["Process"]["ApparmorProfile"], json!(""));
    assert_eq!(actual["OCI"]["Process"]["Args"], json!(["sleep", "3600"]));
    assert_eq!(actual["OCI"]["Linux"]["Resources"]["Memory"], Json::Null);
    assert_eq!(actual["OCI"]["Linux"]["Sysctl"], json!({}));
    assert_eq!(actual["OCI"]["Mounts"][0]["type_"], json!("proc"));
    assert!(actual["OCI"]["Mounts"][0].get("type").is_none());
    assert_eq!(actual["storages"], json!([]));
}

#[test]
fn exec_process_matches_upstream_form() {
    let expected = upstream("ExecProcessRequest");
    let req: ExecProcessRequest = serde_json::from_value(expected.clone()).unwrap();
    let actual = to_json(&message_input(&req));
    assert_contains("input", &actual, &expected);
    assert_eq!(actual["process"]["Args"], json!(["test1", "--flag"]));
}

#[test]
fn every_field_present_under_its_proto_name() {
    let req = CreateContainerRequest {
        container_id: "c1".into(),
        storages: vec![Storage {
            driver: "local".into(),
            mount_point: "/m".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let v = to_json(&message_input(&req));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    for want in [
        "container_id",
        "exec_id",
        "string_user",
        "devices",
        "storages",
        "OCI",
        "sandbox_pidns",
        "shared_mounts",
    ] {
        assert!(keys.iter().any(|k| *k == want), "{want} missing: {keys:?}");
    }
    assert_eq!(v["OCI"], Json::Null);
    assert_eq!(v["string_user"], Json::Null);
    assert_eq!(v["storages"][0]["driver"], json!("local"));
    assert_eq!(v["storages"][0]["fs_group"], Json::Null);
    assert_eq!(v["storages"][0]["options"], json!([]));
    assert_eq!(v["storages"][0]["shared"], json!(false));

    let r = ReadStreamRequest {
        container_id: "c".into(),
        exec_id: "e".into(),
        len: 10,
        ..Default::default()
    };
    assert_eq!(
        to_json(&message_input(&r)),
        json!({"container_id": "c", "exec_id": "e", "len": 10})
    );
}

#[test]
fn keyword_fields_oneofs_and_bytes() {
    let m = Mount {
        type_: "bind".into(),
        ..Default::default()
    };
    let v = to_json(&message_input(&m));
    assert_eq!(v["type_"], json!("bind"));

    let mut sc = LinuxSyscall::new();
    assert_eq!(to_json(&message_input(&sc))["ErrnoRet"], Json::Null);
    sc.set_errnoret(38);
    assert_eq!(
        to_json(&message_input(&sc))["ErrnoRet"],
        json!({"Errnoret": 38})
    );

    let c = CopyFileRequest {
        data: vec![1, 2],
        ..Default::default()
    };
    assert_eq!(to_json(&message_input(&c))["data"], json!([1, 2]));
}

#[test]
fn copy_file_prepared_form() {
    let regular = CopyFileRequest {
        path: "/run/kata-containers/shared/containers/f".into(),
        file_mode: libc::S_IFREG | 0o644,
        dir_mode: libc::S_IFDIR | 0o755,
        file_size: 5,
        uid: 1,
        gid: 2,
        offset: 0,
        data: b"hello".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        to_json(&copy_file_input(&regular).unwrap()),
        json!({
            "path": "/run/kata-containers/shared/containers/f",
            "file_type": "Regular",
            "symlink_target": null,
            "file_size": 5,
            "file_mode": libc::S_IFREG | 0o644,
            "dir_mode": libc::S_IFDIR | 0o755,
            "uid": 1,
            "gid": 2,
            "offset": 0
        })
    );
    let link = CopyFileRequest {
        path: "/p/l".into(),
        file_mode: libc::S_IFLNK | 0o777,
        data: b"..data/x".to_vec(),
        ..Default::default()
    };
    let v = to_json(&copy_file_input(&link).unwrap());
    assert_eq!(v["file_type"], json!("Symlink"));
    assert_eq!(v["symlink_target"], json!("..data/x"));
    assert!(v.get("data").is_none());

    for (mode, kind) in [
        (libc::S_IFDIR, "Directory"),
        (libc::S_IFSOCK, "Unknown"),
        (libc::S_IFDIR | libc::S_IFREG, "Unknown"),
        (libc::S_IFMT, "Unknown"),
        (0, "Unknown"),
    ] {
        assert_eq!(file_type(mode), kind, "mode {mode:o}");
    }

    let bad = CopyFileRequest {
        file_mode: libc::S_IFLNK,
        data: vec![0, 0xff, 0xff, 0],
        ..Default::default()
    };
    assert!(matches!(
        copy_file_input(&bad),
        Err(PolicyError::Internal(_))
    ));
}

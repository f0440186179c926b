//! The serde JSON shape of the generated messages: proto field names as keys,
//! nested messages as objects, bytes as number arrays, enums as integers,
//! 64-bit integers as numbers, and defaults for missing keys.

use protocols::agent::{CreateContainerRequest, Device, FSGroup, Storage, WriteStreamRequest};
use protocols::oci::{LinuxSyscall, Process, Spec, User};
use protocols::types::FSGroupChangePolicy;
use serde_json::json;

#[test]
fn create_container_request_round_trip() {
    let mut req = CreateContainerRequest::new();
    req.container_id = "c1".into();
    req.exec_id = "e1".into();
    let mut process = Process::new();
    process.Args = vec!["/bin/true".into()];
    process.User = Some(User::new()).into();
    process.OOMScoreAdj = -1000;
    let mut spec = Spec::new();
    spec.Version = "1.0.2".into();
    spec.Process = Some(process).into();
    req.OCI = Some(spec).into();
    let mut device = Device::new();
    device.id = "vda".into();
    device.type_ = "blk".into();
    req.devices.push(device);

    let value = serde_json::to_value(&req).unwrap();
    assert_eq!(value["container_id"], "c1");
    assert_eq!(value["string_user"], json!(null));
    assert_eq!(value["OCI"]["Version"], "1.0.2");
    assert_eq!(value["OCI"]["Root"], json!(null));
    assert_eq!(value["OCI"]["Process"]["Args"], json!(["/bin/true"]));
    assert_eq!(value["OCI"]["Process"]["OOMScoreAdj"], json!(-1000));
    assert_eq!(
        value["OCI"]["Process"]["User"],
        json!({"UID": 0, "GID": 0, "AdditionalGids": [], "Username": ""})
    );
    assert_eq!(value["devices"][0]["type"], "blk");
    assert!(value["devices"][0].get("type_").is_none());
    assert!(value.get("special_fields").is_none());

    let back: CreateContainerRequest = serde_json::from_value(value).unwrap();
    assert_eq!(back, req);
}

#[test]
fn missing_keys_take_defaults_and_aliases_are_accepted() {
    let req: CreateContainerRequest = serde_json::from_value(json!({
        "container_id": "c2",
        "OCI": {"Process": {"Args": ["sh"], "OOMScoreAdj": "-17"}},
        "devices": [{"id": "d", "type_": "vfio"}]
    }))
    .unwrap();
    assert_eq!(req.container_id, "c2");
    assert!(req.exec_id.is_empty());
    let process = req.OCI.Process.as_ref().unwrap();
    assert_eq!(process.Args, vec!["sh".to_string()]);
    assert_eq!(process.OOMScoreAdj, -17);
    assert!(process.User.is_none());
    assert_eq!(req.devices[0].type_, "vfio");
}

#[test]
fn device_round_trip() {
    let mut device = Device::new();
    device.id = "0000:00:02.0".into();
    device.type_ = "vfio-pci".into();
    device.vm_path = "/dev/vfio/1".into();
    device.container_path = "/dev/vfio/1".into();
    device.options = vec!["a=b".into()];
    let value = serde_json::to_value(&device).unwrap();
    assert_eq!(
        value,
        json!({
            "id": "0000:00:02.0",
            "type": "vfio-pci",
            "vm_path": "/dev/vfio/1",
            "container_path": "/dev/vfio/1",
            "options": ["a=b"]
        })
    );
    assert_eq!(serde_json::from_value::<Device>(value).unwrap(), device);
}

#[test]
fn bytes_are_number_arrays() {
    let mut req = WriteStreamRequest::new();
    req.container_id = "c".into();
    req.exec_id = "e".into();
    req.data = b"hi\n".to_vec();
    let value = serde_json::to_value(&req).unwrap();
    assert_eq!(
        value,
        json!({"container_id": "c", "exec_id": "e", "data": [104, 105, 10]})
    );
    assert_eq!(
        serde_json::from_value::<WriteStreamRequest>(value).unwrap(),
        req
    );
}

#[test]
fn enums_are_integers_and_names_are_accepted() {
    let mut storage = Storage::new();
    let mut group = FSGroup::new();
    group.group_id = 1000;
    group.group_change_policy = FSGroupChangePolicy::OnRootMismatch.into();
    storage.fs_group = Some(group).into();
    let value = serde_json::to_value(&storage).unwrap();
    assert_eq!(
        value["fs_group"],
        json!({"group_id": 1000, "group_change_policy": 1})
    );
    assert_eq!(serde_json::from_value::<Storage>(value).unwrap(), storage);

    let by_name: FSGroup =
        serde_json::from_value(json!({"group_change_policy": "OnRootMismatch"})).unwrap();
    assert_eq!(
        by_name.group_change_policy.enum_value(),
        Ok(FSGroupChangePolicy::OnRootMismatch)
    );
    assert!(serde_json::from_value::<FSGroup>(json!({"group_change_policy": "Bogus"})).is_err());
}

#[test]
fn oneof_and_64_bit_values() {
    let syscall: LinuxSyscall = serde_json::from_value(json!({
        "Names": ["read"],
        "Action": "SCMP_ACT_ERRNO",
        "ErrnoRet": {"errnoret": 1},
        "Args": [{"Index": 1, "Value": "18446744073709551615"}]
    }))
    .unwrap();
    assert_eq!(syscall.errnoret(), 1);
    assert_eq!(syscall.Args[0].Value, u64::MAX);
    let value = serde_json::to_value(&syscall).unwrap();
    assert_eq!(value["Args"][0]["Value"], json!(u64::MAX));
    assert_eq!(value["ErrnoRet"], json!({"errnoret": 1}));
    assert_eq!(
        serde_json::from_value::<LinuxSyscall>(value).unwrap(),
        syscall
    );
}

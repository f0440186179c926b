//! Structure-aware request generation over protobuf reflection.
//!
//! Every AgentService request type is built from its message descriptor, so a new field in the
//! `.proto` files is fuzzed without touching this file. Choices are drawn from an
//! [`arbitrary::Unstructured`] byte source: the harness feeds it seeded pseudo-random bytes, and a
//! coverage-guided fuzzer (libFuzzer through `cargo fuzz`, where a nightly toolchain exists) can
//! feed it its own inputs through the same entry point, [`Generator::request`].
//!
//! Values are not uniform noise: fields are filled from dictionaries chosen by the field's name
//! (ids from a small pool so that requests meet each other's state, host paths that try to
//! escape, storage drivers and file system types, the edges of every integer width), and half of
//! the requests start from the wire vector of their type (a message with every field set) and
//! mutate a few fields, which reaches deeper into the handlers' validation than fresh messages.

use std::collections::HashMap;
use std::path::Path;

use arbitrary::{Result, Unstructured};
use protobuf::reflect::{
    FieldDescriptor, MessageDescriptor, ReflectValueBox, RuntimeFieldType, RuntimeType,
};
use protobuf::MessageDyn;

/// One method of `grpc.AgentService` and its request type.
#[derive(Clone)]
pub struct Method {
    /// The method name (`CreateContainer`).
    pub name: String,
    /// The request message (`grpc.CreateContainerRequest`).
    pub input: MessageDescriptor,
}

/// Every method of `grpc.AgentService`, as the generated descriptors list them.
pub fn agent_methods() -> Vec<Method> {
    protocols::agent::file_descriptor()
        .services()
        .filter(|s| s.proto().name() == "AgentService")
        .flat_map(|s| {
            s.methods()
                .map(|m| Method {
                    name: m.proto().name().to_string(),
                    input: m.input_type(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Container and exec ids shared by every request, so that requests hit each other's state.
pub const ID_POOL: &[&str] = &["fz-a", "fz-b", "fz-c"];

const BAD_IDS: &[&str] = &["", "..", "../fz-a", "fz/a", "a\0b", " ", "-", "fz-a\n"];

const PATHS: &[&str] = &[
    "",
    "/",
    ".",
    "..",
    "../../..",
    "/etc/passwd",
    "/dev/vda",
    "/dev/null",
    "/proc/self/fd/0",
    "/proc/1/root",
    "/sys/fs/cgroup",
    "/run/kata-containers/shared/containers/fz-a",
    "/run/kata-containers/sandbox/storage/x",
    "/run/kata-containers/fz-a/rootfs",
    "/run/kata-containers/shared/containers/../../../etc",
    "rootfs",
    "a/../../b",
    "/tmp",
    "//x//y/",
];

const DRIVERS: &[&str] = &[
    "",
    "blk",
    "blk-ccw",
    "mmioblk",
    "scsi",
    "nvdimm",
    "ephemeral",
    "local",
    "9p",
    "virtio-fs",
    "overlayfs",
    "watchable-bind",
    "image_guest_pull",
    "bogus",
];

const FSTYPES: &[&str] = &[
    "", "bind", "tmpfs", "ext4", "xfs", "9p", "virtiofs", "overlay", "proc", "sysfs", "devtmpfs",
    "local", "none",
];

const OPTIONS: &[&str] = &[
    "",
    "ro",
    "rw",
    "bind",
    "rbind",
    "size=1k",
    "size=99999999999999999999",
    "mode=0777",
    "fsgid=-1",
    "x-kata.nosuchopt",
    "lowerdir=/:/etc",
    "nodev",
];

const WORDS: &[&str] = &[
    "sh",
    "/bin/sh",
    "true",
    "-c",
    "echo fuzz",
    "PATH=/bin",
    "root",
    "0",
    "65535",
    "eth0",
    "lo",
    "10.0.0.1/24",
    "::1",
    "fe80::1",
    "255.255.255.255",
    "00:11:22:33:44:55",
    "SIGKILL",
    "memory",
    "cdi.k8s.io/x",
    "io.kubernetes.cri.container-type",
    "sandbox",
    "container",
];

const I64S: &[i64] = &[
    0,
    1,
    -1,
    2,
    4096,
    i32::MAX as i64,
    i32::MIN as i64,
    i64::MAX,
    i64::MIN,
];
const U64S: &[u64] = &[
    0,
    1,
    2,
    4096,
    1 << 20,
    u32::MAX as u64,
    1 << 40,
    u64::MAX - 1,
    u64::MAX,
];

/// Deepest nesting filled in a fresh message (the OCI spec is deep; deeper levels add little).
const MAX_DEPTH: usize = 5;
/// Most entries in a generated repeated field or map.
const MAX_ENTRIES: usize = 4;

/// Builds request payloads.
pub struct Generator {
    methods: Vec<Method>,
    /// Wire vectors by message name (`CreateContainerRequest`), the mutation seeds.
    seeds: HashMap<String, Vec<u8>>,
}

impl Generator {
    /// A generator seeded with the wire vectors in `vectors` (`grpc.<Message>.bin` files); a
    /// missing directory leaves it with fresh messages only.
    pub fn new(vectors: Option<&Path>) -> Generator {
        let mut seeds = HashMap::new();
        if let Some(dir) = vectors {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if let Some(msg) = name
                        .strip_prefix("grpc.")
                        .and_then(|n| n.strip_suffix(".bin"))
                    {
                        if let Ok(bytes) = std::fs::read(e.path()) {
                            seeds.insert(msg.to_string(), bytes);
                        }
                    }
                }
            }
        }
        Generator {
            methods: agent_methods(),
            seeds,
        }
    }

    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// How many methods have a seed vector.
    pub fn seeded(&self) -> usize {
        self.methods
            .iter()
            .filter(|m| self.seeds.contains_key(m.input.name()))
            .count()
    }

    /// One encoded request for `method`.
    pub fn request(&self, u: &mut Unstructured, method: &Method) -> Result<Vec<u8>> {
        let mut msg = match self.seeds.get(method.input.name()) {
            Some(seed) if u.ratio(1, 2)? => {
                let mut msg = method
                    .input
                    .parse_from_bytes(seed)
                    .unwrap_or_else(|_| method.input.new_instance());
                for _ in 0..u.int_in_range(1..=4)? {
                    mutate(u, &mut *msg, 0)?;
                }
                msg
            }
            _ => fill(u, &method.input, 0)?,
        };
        // The pool ids are the common case: they make requests meet each other's containers.
        steer_ids(u, &mut *msg)?;
        Ok(msg
            .write_to_bytes_dyn()
            .expect("a message built from its descriptor encodes"))
    }
}

/// A fresh message with a random subset of its fields set.
fn fill(
    u: &mut Unstructured,
    desc: &MessageDescriptor,
    depth: usize,
) -> Result<Box<dyn MessageDyn>> {
    let mut msg = desc.new_instance();
    for field in desc.fields() {
        // Near the top most fields are set; deeper down, fewer, so messages stay small.
        let keep = if depth == 0 {
            u.ratio(4, 5)?
        } else {
            u.ratio(1, 2)?
        };
        if keep {
            set_field(u, &mut *msg, &field, depth)?;
        }
    }
    Ok(msg)
}

/// Sets `field` of `msg` to a generated value (appends entries to lists and maps).
fn set_field(
    u: &mut Unstructured,
    msg: &mut dyn MessageDyn,
    field: &FieldDescriptor,
    depth: usize,
) -> Result<()> {
    let name = field.name().to_string();
    match field.runtime_field_type() {
        RuntimeFieldType::Singular(t) => {
            if let Some(v) = value(u, &t, &name, depth)? {
                field.set_singular_field(msg, v);
            }
        }
        RuntimeFieldType::Repeated(t) => {
            let n = u.int_in_range(0..=MAX_ENTRIES)?;
            for _ in 0..n {
                if let Some(v) = value(u, &t, &name, depth)? {
                    field.mut_repeated(msg).push(v);
                }
            }
        }
        RuntimeFieldType::Map(k, v) => {
            let n = u.int_in_range(0..=MAX_ENTRIES)?;
            for _ in 0..n {
                let (Some(key), Some(val)) =
                    (value(u, &k, &name, depth)?, value(u, &v, &name, depth)?)
                else {
                    continue;
                };
                field.mut_map(msg).insert(key, val);
            }
        }
    }
    Ok(())
}

/// One value of type `t`; `None` for a nested message below the depth limit.
fn value(
    u: &mut Unstructured,
    t: &RuntimeType,
    field: &str,
    depth: usize,
) -> Result<Option<ReflectValueBox>> {
    Ok(Some(match t {
        RuntimeType::I32 => ReflectValueBox::I32(int(u)? as i32),
        RuntimeType::I64 => ReflectValueBox::I64(int(u)?),
        RuntimeType::U32 => ReflectValueBox::U32(uint(u)? as u32),
        RuntimeType::U64 => ReflectValueBox::U64(uint(u)?),
        RuntimeType::F32 => ReflectValueBox::F32(*u.choose(&[0.0, -1.0, 1e30, f32::NAN])?),
        RuntimeType::F64 => ReflectValueBox::F64(*u.choose(&[0.0, -1.0, 1e300, f64::INFINITY])?),
        RuntimeType::Bool => ReflectValueBox::Bool(u.arbitrary()?),
        RuntimeType::String => ReflectValueBox::String(string(u, field)?),
        RuntimeType::VecU8 => ReflectValueBox::Bytes(bytes(u)?),
        RuntimeType::Enum(e) => {
            let values: Vec<i32> = e.values().map(|v| v.value()).collect();
            let n = if values.is_empty() || u.ratio(1, 8)? {
                u.arbitrary()?
            } else {
                *u.choose(&values)?
            };
            ReflectValueBox::Enum(e.clone(), n)
        }
        RuntimeType::Message(m) => {
            if depth >= MAX_DEPTH {
                return Ok(None);
            }
            ReflectValueBox::Message(fill(u, m, depth + 1)?)
        }
    }))
}

fn int(u: &mut Unstructured) -> Result<i64> {
    if u.ratio(2, 3)? {
        Ok(*u.choose(I64S)?)
    } else {
        u.arbitrary()
    }
}

fn uint(u: &mut Unstructured) -> Result<u64> {
    if u.ratio(2, 3)? {
        Ok(*u.choose(U64S)?)
    } else {
        u.arbitrary()
    }
}

/// A string chosen by what the field holds.
fn string(u: &mut Unstructured, field: &str) -> Result<String> {
    let f = field.to_ascii_lowercase();
    if u.ratio(1, 10)? {
        // Anything at all, occasionally long.
        let len = *u.choose(&[0usize, 1, 7, 255, 4096, 70_000])?;
        let mut s = String::with_capacity(len);
        for _ in 0..len {
            s.push(char::from(u.int_in_range(1u8..=127)?));
        }
        return Ok(s);
    }
    let pick = if f.ends_with("id") || f == "sandbox_id" || f == "name" {
        if u.ratio(4, 5)? {
            u.choose(ID_POOL)?
        } else {
            u.choose(BAD_IDS)?
        }
    } else if f.contains("driver") {
        u.choose(DRIVERS)?
    } else if f.contains("fstype") || f == "type" {
        u.choose(FSTYPES)?
    } else if f.contains("option") {
        u.choose(OPTIONS)?
    } else if f.contains("path")
        || f.contains("source")
        || f.contains("mount")
        || f.contains("dest")
        || f.contains("root")
        || f.contains("cwd")
        || f.contains("dir")
    {
        u.choose(PATHS)?
    } else if u.ratio(1, 2)? {
        u.choose(WORDS)?
    } else {
        u.choose(PATHS)?
    };
    Ok(pick.to_string())
}

fn bytes(u: &mut Unstructured) -> Result<Vec<u8>> {
    let len = *u.choose(&[0usize, 1, 16, 512, 65_536])?;
    let mut v = vec![0u8; len];
    for b in v.iter_mut().take(64) {
        *b = u.arbitrary()?;
    }
    Ok(v)
}

/// Changes one field somewhere in `msg`: regenerates, clears, or descends into a nested message.
fn mutate(u: &mut Unstructured, msg: &mut dyn MessageDyn, depth: usize) -> Result<()> {
    let desc = msg.descriptor_dyn();
    let fields: Vec<FieldDescriptor> = desc.fields().collect();
    if fields.is_empty() {
        return Ok(());
    }
    let field = u.choose(&fields)?.clone();
    let nested = matches!(
        field.runtime_field_type(),
        RuntimeFieldType::Singular(RuntimeType::Message(_))
    );
    if nested && depth < MAX_DEPTH && u.ratio(2, 3)? {
        return mutate(u, field.mut_message(msg), depth + 1);
    }
    if u.ratio(1, 4)? {
        field.clear_field(msg);
    } else {
        if !matches!(field.runtime_field_type(), RuntimeFieldType::Singular(_)) && u.ratio(1, 2)? {
            field.clear_field(msg);
        }
        set_field(u, msg, &field, depth.max(MAX_DEPTH - 2))?;
    }
    Ok(())
}

/// Points the top-level `container_id`/`exec_id` at the id pool most of the time.
fn steer_ids(u: &mut Unstructured, msg: &mut dyn MessageDyn) -> Result<()> {
    let desc = msg.descriptor_dyn();
    for field in desc.fields() {
        if matches!(field.name(), "container_id" | "exec_id" | "sandbox_id")
            && matches!(
                field.runtime_field_type(),
                RuntimeFieldType::Singular(RuntimeType::String)
            )
            && u.ratio(3, 4)?
        {
            let id = if field.name() == "exec_id" && u.ratio(1, 3)? {
                ""
            } else {
                *u.choose(ID_POOL)?
            };
            field.set_singular_field(msg, ReflectValueBox::String(id.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_generates_decodable_requests() {
        let g = Generator::new(Some(&crate::wire_vectors_dir()));
        assert_eq!(g.methods().len(), 42, "grpc.AgentService has 42 methods");
        assert!(g.seeded() >= 40, "wire vectors seed the requests");
        let mut rng = crate::Rng::new(7);
        for round in 0..20 {
            for m in g.methods() {
                let data = rng.bytes(4096);
                let mut u = Unstructured::new(&data);
                let payload = g.request(&mut u, m).unwrap();
                m.input
                    .parse_from_bytes(&payload)
                    .unwrap_or_else(|e| panic!("{} round {round}: {e}", m.name));
            }
        }
    }
}

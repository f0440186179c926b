//! What a container's set-up takes from the sandbox, handed in by the agent state so that this
//! module never looks at the sandbox itself.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::Spec;

/// OCI hooks found below CreateSandbox's `guest_hook_path`, merged into container specs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestHooks {
    pub prestart: Vec<oci_spec::runtime::Hook>,
    pub poststart: Vec<oci_spec::runtime::Hook>,
    pub poststop: Vec<oci_spec::runtime::Hook>,
}

impl GuestHooks {
    pub fn is_empty(&self) -> bool {
        self.prestart.is_empty() && self.poststart.is_empty() && self.poststop.is_empty()
    }
}

/// What a container's set-up takes from the sandbox (the agent state builds it: `Agent::container_env`).
pub struct ContainerEnv {
    pub engine: engine::EngineConfig,
    pub pipe_size: i32,
    pub hooks: GuestHooks,
    /// The sandbox's shared namespaces by kind (`ipc`, `uts`).
    pub shared_ns: HashMap<&'static str, PathBuf>,
}

/// Appends the sandbox's guest hooks to the spec's own lists.
pub(super) fn merge_guest_hooks(spec: &mut Spec, guest: &GuestHooks) {
    if guest.is_empty() {
        return;
    }
    let mut hooks = spec.hooks().clone().unwrap_or_default();
    let join = |own: &Option<Vec<oci_spec::runtime::Hook>>, extra: &[oci_spec::runtime::Hook]| {
        let mut list = own.clone().unwrap_or_default();
        list.extend(extra.iter().cloned());
        (!list.is_empty()).then_some(list)
    };
    let prestart = join(hooks.prestart(), &guest.prestart);
    let poststart = join(hooks.poststart(), &guest.poststart);
    let poststop = join(hooks.poststop(), &guest.poststop);
    hooks.set_prestart(prestart);
    hooks.set_poststart(poststart);
    hooks.set_poststop(poststop);
    spec.set_hooks(Some(hooks));
}

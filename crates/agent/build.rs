//! Rebuilds the agent when `text-order.txt` changes: `scripts/build-static.sh` hands that list to
//! the linker to lay the code out, and cargo does not know the linker reads it.

fn main() {
    println!("cargo:rerun-if-changed=text-order.txt");
}

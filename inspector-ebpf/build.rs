use which::which;

fn main() {
    // Rebuild the eBPF object when bpf-linker changes (it links the object,
    // so a new linker can change the output while no source changed).
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    // bpf-linker asks LLVM to keep memcpy's loads and stores in order
    // (`--bpf-expand-memcpy-in-order`, for JITs that match the pattern),
    // which leaves every memset and memmove a call to a function that
    // copies a byte a turn: a flow entry copied out of its map took over
    // 700 instructions. Without it LLVM writes them as loads and stores.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}

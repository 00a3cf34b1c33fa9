//! A WebAssembly component of another world (`wasi:cli/command`), for testing that the hub
//! refuses uploads that are components but not hub plugins.

fn main() {
    println!("I am a command, not a hub plugin");
}

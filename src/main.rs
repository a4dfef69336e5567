// See Cargo.toml: musl's allocator is slow for a multi-threaded streaming pull.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    modelcrypt::cli::run()
}

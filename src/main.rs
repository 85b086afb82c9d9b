// Pages are parsed on one thread and landed on another: an allocator whose
// cross-thread frees take no global lock (glibc's malloc spent half of an
// extraction in its arena locks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ferry::allocator::configure();
    ferry::cli::main()
}

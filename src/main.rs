//! The `mailgate` command line; the only place that exits the process.

fn main() {
    println!("mailgate {}", env!("CARGO_PKG_VERSION"));
}

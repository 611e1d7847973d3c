#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let events: u64 = std::env::args().nth(2).map_or(2_000_000, |s| s.parse().unwrap());
    let f = testbed::bench::dataplane::run(&bin, events, 1024).await?;
    println!("{f:?} ratio {:.3}", f.ratio());
    Ok(())
}

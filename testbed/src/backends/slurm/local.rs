//! A private Slurm cluster on this machine, started for one run and removed after it.
//!
//! Daemons, in start order: munged on a private socket, slurmctld, one slurmd per node of
//! the topology (Debian's slurmd runs several per host with `-N`, each on its own port),
//! and slurmrestd. All of them stay in the foreground as children of the harness, listen on
//! 127.0.0.1 or a unix socket, and carry the run id in their environment, so that
//! `testbed clean` finds what a killed run left. Configuration, state and logs are under
//! the run's `slurm/` folder. munged's socket and the slurmd spools, which hold the job
//! steps' sockets, live in a short folder under /tmp instead: munged needs every folder
//! above its socket to be world-searchable, and a socket path must stay under 108 bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orchestrator::model::Topology;
use tokio::process::{Child, Command};
use tracing::{debug, info, warn};

use super::rest::SlurmRest;
use crate::backends::{HARNESS_PID_ENV, RUN_ID_ENV, RunLabels};

/// Debian's packages that provide the daemons; the error for a missing one names them.
pub const PACKAGES: &str = "slurm-wlm slurmctld slurmd munge slurmrestd slurm-wlm-jwt-plugin";
/// How long the cluster may take from the first daemon to its first scheduling cycle.
/// slurmctld runs that cycle about 3 s after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a daemon may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Seconds of silence after which slurmctld marks a slurmd not responding. Slurm takes
/// about 3 of these to set the node down.
const SLURMD_TIMEOUT_S: u32 = 3;

/// Start of the name of the run's folder under /tmp (munged's socket, slurmd spools); the run
/// id follows.
pub const RUNTIME_DIR_PREFIX: &str = "testbed-slurm-";

/// A running local cluster.
pub struct LocalSlurm {
    dir: PathBuf,
    munge_dir: PathBuf,
    conf: PathBuf,
    /// Daemons in start order, with their names for logs.
    daemons: Vec<(String, Child)>,
    /// slurmd of each node, by node name: a fault freezes or kills one of them.
    slurmd_pids: BTreeMap<String, u32>,
    rest: SlurmRest,
    run_id: String,
    stopped: bool,
    /// Ports the daemons use; instances take theirs from the same pool.
    pub ports: PortPool,
}

/// Locates a daemon or tool of the Slurm packages.
fn program(name: &str) -> Result<PathBuf, String> {
    for folder in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = Path::new(folder).join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(format!(
        "`{name}` is not installed, so no local Slurm can start. Install Debian's packages \
         with `cargo xtask install-slurm` (apt-get install {PACKAGES}), or point the run at a \
         running slurmrestd with --slurm-url and --slurm-token"
    ))
}

/// Checks that every program the local cluster runs is installed.
pub fn check_programs() -> Result<(), String> {
    for name in ["munged", "mungekey", "slurmctld", "slurmd", "slurmrestd", "scontrol", "scancel"] {
        program(name)?;
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1, as the kernel hands it out. Another program could take it
/// before the daemon binds it; the daemon then fails to start with a clear log line.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|error| format!("cannot find a free port on 127.0.0.1: {error}"))?;
    listener.local_addr().map(|addr| addr.port()).map_err(|error| error.to_string())
}

/// Ports handed out in one run, so that no two daemons or instances get the same one: the
/// kernel can return a port again right after it was probed and released.
#[derive(Debug, Default)]
pub struct PortPool {
    used: std::collections::BTreeSet<u16>,
}

impl PortPool {
    pub fn take(&mut self) -> Result<u16, String> {
        for _ in 0..100 {
            let port = free_port()?;
            if self.used.insert(port) {
                return Ok(port);
            }
        }
        Err("no unused port on 127.0.0.1 after 100 tries".to_string())
    }
}

/// The run's folder under /tmp.
pub fn runtime_dir(run_id: &str) -> PathBuf {
    Path::new("/tmp").join(format!("{RUNTIME_DIR_PREFIX}{run_id}"))
}

/// Longest node name whose job step sockets fit in a unix socket path, for `run_id`. A
/// step's socket is `<runtime>/spool/<node>/<node>_<job id>.4294967291`.
pub fn max_node_name(run_id: &str) -> usize {
    const SOCKET_PATH_MAX: usize = 107;
    let fixed = runtime_dir(run_id).to_string_lossy().len()
        + "/spool/".len()
        + "/_".len()
        + "9999999.4294967291".len();
    SOCKET_PATH_MAX.saturating_sub(fixed) / 2
}

/// Partition of a topology cluster: its name, which is also how a site's Slurm names it.
pub fn partition_name(cluster: &str) -> String {
    cluster.to_string()
}

/// Ports of one cluster's daemons.
struct Ports {
    ctld: u16,
    slurmd_default: u16,
    nodes: Vec<(String, String, u16, u32)>,
    rest: u16,
}

impl LocalSlurm {
    /// Writes the configuration and starts every daemon, then waits until all nodes are
    /// idle and the scheduler has run once.
    pub async fn start(
        topology: &Topology,
        dir: &Path,
        labels: &RunLabels,
    ) -> Result<LocalSlurm, String> {
        let munged = program("munged")?;
        let mungekey = program("mungekey")?;
        let slurmctld = program("slurmctld")?;
        let slurmd = program("slurmd")?;
        let slurmrestd = program("slurmrestd")?;
        let scontrol = program("scontrol")?;
        let started = Instant::now();

        let munge_dir = runtime_dir(&labels.run_id);
        for folder in ["", "state", "run", "log", "jobs"] {
            make_dir(&dir.join(folder))?;
        }
        make_dir(&munge_dir)?;
        let key = munge_dir.join("munge.key");
        run_tool(&mungekey, &["-c", "-k", &key.to_string_lossy()], None).await?;
        let jwt_key = dir.join("state").join("jwt_hs256.key");
        let secret: [u8; 32] = rand::random();
        std::fs::write(&jwt_key, secret)
            .and_then(|()| {
                std::fs::set_permissions(&jwt_key, std::fs::Permissions::from_mode(0o600))
            })
            .map_err(|error| format!("cannot write {}: {error}", jwt_key.display()))?;

        let mut pool = PortPool::default();
        let mut nodes = Vec::new();
        for cluster in topology.clusters() {
            for node in &cluster.nodes {
                let node = topology.node(*node);
                nodes.push((
                    node.name.clone(),
                    cluster.name.clone(),
                    pool.take()?,
                    node.cores.get(),
                ));
            }
        }
        let ports =
            Ports { ctld: pool.take()?, slurmd_default: pool.take()?, nodes, rest: pool.take()? };
        let conf = dir.join("slurm.conf");
        let text = config(&labels.run_id, dir, &munge_dir, &jwt_key, &ports);
        std::fs::write(&conf, text)
            .map_err(|error| format!("cannot write {}: {error}", conf.display()))?;

        let mut cluster = LocalSlurm {
            dir: dir.to_path_buf(),
            munge_dir: munge_dir.clone(),
            conf: conf.clone(),
            daemons: Vec::new(),
            slurmd_pids: BTreeMap::new(),
            rest: SlurmRest::new(&format!("http://127.0.0.1:{}", ports.rest), "root", "")?,
            run_id: labels.run_id.clone(),
            stopped: false,
            ports: pool,
        };
        let socket = munge_dir.join("munge.sock");
        let conf_arg = conf.to_string_lossy().to_string();
        cluster.spawn(
            "munged",
            &munged,
            &[
                "-F".to_string(),
                format!("--socket={}", socket.display()),
                format!("--key-file={}", key.display()),
                format!("--pid-file={}", munge_dir.join("munged.pid").display()),
                format!("--log-file={}", dir.join("log").join("munged.log").display()),
                format!("--seed-file={}", munge_dir.join("munged.seed").display()),
            ],
            &[],
            labels,
        )?;
        cluster.wait_for("munged", READY_TIMEOUT, || socket.exists()).await?;
        cluster.spawn(
            "slurmctld",
            &slurmctld,
            &["-D".into(), "-f".into(), conf_arg.clone()],
            &[],
            labels,
        )?;
        let ctld = ports.ctld;
        cluster
            .wait_for("slurmctld", READY_TIMEOUT, || {
                TcpStream::connect(("127.0.0.1", ctld)).is_ok()
            })
            .await?;
        for (node, _, _, _) in &ports.nodes {
            make_dir(&munge_dir.join("spool").join(node))?;
            let args =
                ["-D".to_string(), "-N".to_string(), node.clone(), "-f".into(), conf_arg.clone()];
            let pid = cluster.spawn(&format!("slurmd-{node}"), &slurmd, &args, &[], labels)?;
            cluster.slurmd_pids.insert(node.clone(), pid);
        }
        let rest_args = [
            "-f".to_string(),
            conf_arg.clone(),
            "-a".into(),
            "rest_auth/jwt".into(),
            "-s".into(),
            "openapi/v0.0.36,openapi/v0.0.37,openapi/v0.0.38".into(),
            format!("127.0.0.1:{}", ports.rest),
        ];
        // slurmrestd refuses root without the first variable; the second makes it accept
        // the tokens that slurmctld signs with the run's key.
        let rest_env = [("SLURMRESTD_SECURITY", "disable_user_check"), ("SLURM_JWT", "daemon")];
        cluster.spawn("slurmrestd", &slurmrestd, &rest_args, &rest_env, labels)?;

        let token_line =
            run_tool(&scontrol, &["token", "username=root", "lifespan=86400"], Some(&conf)).await?;
        let token = token_line
            .lines()
            .find_map(|line| line.trim().strip_prefix("SLURM_JWT="))
            .ok_or_else(|| format!("`scontrol token` printed no token: {token_line}"))?
            .to_string();
        cluster.rest = SlurmRest::new(&format!("http://127.0.0.1:{}", ports.rest), "root", &token)?;

        let expected = ports.nodes.len();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            cluster.check_daemons()?;
            let nodes = cluster.rest.nodes().await;
            let idle = nodes.as_ref().map(|nodes| nodes.iter().filter(|n| n.is_usable()).count());
            let cycles = cluster.rest.schedule_cycles().await.unwrap_or(0);
            if idle.as_ref().is_ok_and(|idle| *idle == expected) && cycles > 0 {
                break;
            }
            if Instant::now() > deadline {
                let state = match nodes {
                    Ok(nodes) => format!(
                        "{} of {expected} nodes idle, {cycles} scheduling cycles",
                        nodes.iter().filter(|n| n.is_usable()).count()
                    ),
                    Err(error) => error.to_string(),
                };
                return Err(format!(
                    "the local Slurm was not ready within {} s ({state}); see the logs in {}",
                    READY_TIMEOUT.as_secs(),
                    dir.join("log").display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        info!(nodes = expected, rest = %cluster.rest.base(), ready_s = started.elapsed().as_secs_f64(), "local Slurm is ready");
        Ok(cluster)
    }

    pub fn rest(&self) -> &SlurmRest {
        &self.rest
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }

    pub fn slurmd_pid(&self, node: &str) -> Option<u32> {
        self.slurmd_pids.get(node).copied()
    }

    /// Runs `scontrol` or `scancel` against this cluster; used for the calls that
    /// slurmrestd v0.0.38 lacks (node state changes, signals to a job).
    pub async fn tool(&self, name: &str, args: &[&str]) -> Result<String, String> {
        run_tool(&program(name)?, args, Some(&self.conf)).await
    }

    fn spawn(
        &mut self,
        name: &str,
        path: &Path,
        args: &[String],
        env: &[(&str, &str)],
        labels: &RunLabels,
    ) -> Result<u32, String> {
        let log = self.dir.join("log").join(format!("{name}.out"));
        let out = std::fs::File::create(&log)
            .map_err(|error| format!("cannot create {}: {error}", log.display()))?;
        let err = out.try_clone().map_err(|error| error.to_string())?;
        let mut command = Command::new(path);
        command
            .args(args)
            .envs(env.iter().copied())
            .env("SLURM_CONF", &self.conf)
            .env(RUN_ID_ENV, &labels.run_id)
            .env(HARNESS_PID_ENV, labels.harness_pid.to_string())
            .current_dir(self.dir.join("log"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            // Out of the terminal's process group: Ctrl-C reaches the harness, which then
            // stops the daemons in order.
            .process_group(0);
        let child =
            command.spawn().map_err(|error| format!("cannot start {}: {error}", path.display()))?;
        let pid = child.id().unwrap_or(0);
        debug!(daemon = name, pid, "started");
        self.daemons.push((name.to_string(), child));
        Ok(pid)
    }

    /// Fails if a daemon has exited, naming it and the end of its log.
    fn check_daemons(&mut self) -> Result<(), String> {
        for (name, child) in &mut self.daemons {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.dir.join("log").join(format!("{name}.out"));
                return Err(format!(
                    "{name} exited ({status}) while the local Slurm started; last lines of {}:\n{}",
                    log.display(),
                    crate::backends::process::log_tail(&log, 8)
                ));
            }
        }
        Ok(())
    }

    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !ready() {
            self.check_daemons()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "{what} did not come up within {} s; see {}",
                    timeout.as_secs(),
                    self.dir.join("log").display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops every daemon, then kills whatever process of the run is left (job steps keep
    /// running when their slurmd ends), and removes munged's folder.
    pub async fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // The Slurm daemons all at once, munged after them: they need it to say goodbye.
        let mut daemons = std::mem::take(&mut self.daemons);
        let munged =
            daemons.iter().position(|(name, _)| name == "munged").map(|at| daemons.remove(at));
        stop_daemons(&mut daemons).await;
        stop_daemons(&mut munged.into_iter().collect::<Vec<_>>()).await;
        let killed = kill_run_processes(&self.run_id);
        if killed > 0 {
            debug!(killed, "killed job steps left by the local Slurm");
        }
        let _ = std::fs::remove_dir_all(&self.munge_dir);
    }
}

/// Sends SIGTERM to every daemon, then waits for each, killing those that outlast
/// [`STOP_GRACE`].
async fn stop_daemons(daemons: &mut [(String, Child)]) {
    for (_, child) in daemons.iter() {
        // A frozen daemon does not see SIGTERM until it runs again.
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for (name, child) in daemons.iter_mut() {
        if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
            warn!(daemon = %name, "did not exit after SIGTERM; killing it");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl Drop for LocalSlurm {
    /// After a panic: the daemons die with their handles (`kill_on_drop`); job steps and
    /// their processes are not children, so they are killed here by run id.
    fn drop(&mut self) {
        if !self.stopped {
            for (_, child) in &mut self.daemons {
                let _ = child.start_kill();
            }
            kill_run_processes(&self.run_id);
            let _ = std::fs::remove_dir_all(&self.munge_dir);
        }
    }
}

/// SIGKILLs every process whose environment carries `run_id`, except this one; returns how
/// many there were.
pub fn kill_run_processes(run_id: &str) -> usize {
    let own = std::process::id() as i32;
    let pids = run_processes(run_id);
    for pid in pids.iter().filter(|pid| **pid != own) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    pids.len()
}

/// Processes whose environment carries `run_id` and every variable of `also`.
pub fn run_processes_with(run_id: &str, also: &[(&str, &str)]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let wanted = format!("{RUN_ID_ENV}={run_id}");
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let has = |item: &str| environ.split(|byte| *byte == 0).any(|var| var == item.as_bytes());
        if has(&wanted) && also.iter().all(|(key, value)| has(&format!("{key}={value}"))) {
            found.push(pid);
        }
    }
    found
}

fn run_processes(run_id: &str) -> Vec<i32> {
    run_processes_with(run_id, &[])
}

fn make_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
        .map_err(|error| format!("cannot create {}: {error}", path.display()))
}

/// Runs a Slurm or munge tool and returns its standard output, or an error with its output.
async fn run_tool(path: &Path, args: &[&str], conf: Option<&Path>) -> Result<String, String> {
    let mut command = Command::new(path);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    if let Some(conf) = conf {
        // Without it the tools look for the controller in DNS.
        command.env("SLURM_CONF", conf);
    }
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .map_err(|_| format!("{} {} did not finish within 20 s", path.display(), args.join(" ")))?
        .map_err(|error| format!("cannot run {}: {error}", path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}{}",
            path.display(),
            args.join(" "),
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(stdout)
}

/// slurm.conf of the local cluster. Settings that are not Slurm's defaults:
/// - `CommunicationParameters=NoCtldInAddrAny,NoInAddrAny`: bind 127.0.0.1, not 0.0.0.0;
/// - `ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none`: no cgroups needed;
/// - `SlurmdParameters=config_overrides`: nodes may declare more CPUs than the host has;
/// - `SchedulerParameters=batch_sched_delay=0,sched_min_interval=0`: start jobs sooner;
/// - `JobRequeue=0`, `ReturnToService=1`: a failed job stays failed, and a node set down
///   stays down until resumed, so the orchestrator's recovery is what gets measured.
fn config(run_id: &str, dir: &Path, munge_dir: &Path, jwt_key: &Path, ports: &Ports) -> String {
    let d = dir.display();
    let mut text = String::new();
    let _ = writeln!(text, "# Local Slurm of testbed run {run_id}; removed with the run.");
    let _ = writeln!(text, "ClusterName=testbed");
    let _ = writeln!(text, "SlurmctldHost=localhost(127.0.0.1)");
    let _ = writeln!(text, "SlurmctldPort={}", ports.ctld);
    let _ = writeln!(text, "SlurmdPort={}", ports.slurmd_default);
    let _ = writeln!(text, "SlurmUser=root\nSlurmdUser=root");
    let _ = writeln!(text, "AuthType=auth/munge\nCredType=cred/munge");
    let _ = writeln!(text, "AuthInfo=socket={}", munge_dir.join("munge.sock").display());
    let _ = writeln!(text, "AuthAltTypes=auth/jwt");
    let _ = writeln!(text, "AuthAltParameters=jwt_key={}", jwt_key.display());
    let _ = writeln!(text, "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny");
    let _ = writeln!(text, "StateSaveLocation={d}/state");
    let _ = writeln!(text, "SlurmdSpoolDir={}/spool/%n", munge_dir.display());
    let _ = writeln!(text, "SlurmctldPidFile={d}/run/slurmctld.pid");
    let _ = writeln!(text, "SlurmdPidFile={d}/run/slurmd-%n.pid");
    let _ = writeln!(text, "SlurmctldLogFile={d}/log/slurmctld.log");
    let _ = writeln!(text, "SlurmdLogFile={d}/log/slurmd-%n.log");
    let _ = writeln!(text, "SlurmctldDebug=info\nSlurmdDebug=info");
    let _ = writeln!(text, "MailProg=/bin/true");
    let _ = writeln!(text, "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none");
    let _ = writeln!(text, "JobAcctGatherType=jobacct_gather/none");
    let _ = writeln!(text, "AccountingStorageType=accounting_storage/none");
    let _ = writeln!(text, "MpiDefault=none");
    let _ = writeln!(text, "SchedulerType=sched/backfill");
    let _ = writeln!(text, "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU");
    let _ = writeln!(text, "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0");
    let _ = writeln!(text, "JobRequeue=0\nReturnToService=1");
    let _ = writeln!(text, "SlurmdTimeout={SLURMD_TIMEOUT_S}\nMessageTimeout={SLURMD_TIMEOUT_S}");
    let _ = writeln!(text, "SlurmctldTimeout=10\nKillWait=2");
    let _ = writeln!(text, "SlurmdParameters=config_overrides");
    let mut partitions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, cluster, port, cores) in &ports.nodes {
        let _ = writeln!(
            text,
            "NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} Port={port} CPUs={} \
             RealMemory=1000 State=UNKNOWN",
            cores
        );
        partitions.entry(cluster.as_str()).or_default().push(node.as_str());
    }
    for (cluster, nodes) in partitions {
        let _ = writeln!(
            text,
            "PartitionName={} Nodes={} MaxTime=INFINITE State=UP",
            partition_name(cluster),
            nodes.join(",")
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pool_never_repeats_a_port() {
        let mut pool = PortPool::default();
        let ports: Vec<u16> = (0..200).map(|_| pool.take().unwrap()).collect();
        let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
    }

    #[test]
    fn node_names_fit_in_socket_paths() {
        let run_id = "20261204-195155-dd3e90";
        let longest = max_node_name(run_id);
        let node = "n".repeat(longest);
        let socket =
            format!("{}/spool/{node}/{node}_9999999.4294967291", runtime_dir(run_id).display());
        assert!(socket.len() <= 107, "{} bytes: {socket}", socket.len());
        assert!(longest >= 16, "{longest}");
    }
}

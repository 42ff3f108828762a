//! `kestrel`: boots a Linux guest on KVM from a QEMU-compatible command line.

mod announce;
mod chardev;
mod cmdline;
mod control;
mod dirty_log;
mod event_loop;
mod fdpass;
mod io_thread;
mod irq;
mod machine;
mod memory;
mod migrate;
mod migrate_ops;
mod pci;
mod qmp_commands;
mod qmp_devices;
mod qmp_memory;
mod qmp_migration;
mod qmp_platform;
mod qmp_transport;
mod rtc_clock;
mod timers;
mod vcpu;
mod vm;
mod vm_events;
mod worker;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use chardev::{Backend, Chardev};
use cmdline::{Action, ChardevBackend, Config};
use machine::{Identity, Machine};
use monitor::{MachineEvent, Monitor, MonitorConfig, VersionInfo};
use vm::VmConfig;
use vmm_sys_util::eventfd::EventFd;

/// Everything the event loop hears about from other threads: vCPUs and the signal thread.
#[derive(Debug)]
pub enum ControlEvent {
    /// Something the guest did, tagged with the boot it came from.
    Vm {
        generation: u64,
        event: vm_events::VmEvent,
    },
    /// What a migration's thread reports, tagged with the migration's id.
    Migration {
        id: u64,
        report: migrate::MigrationReport,
    },
    /// Ctrl-A x on the console.
    Quit,
}

/// Sends a `ControlEvent` and wakes the event loop's epoll.
#[derive(Clone)]
pub struct ControlSender {
    tx: Sender<ControlEvent>,
    wake: Arc<EventFd>,
}

/// The event loop is gone (the process is ending).
#[derive(Debug)]
pub struct LoopGone;

impl ControlSender {
    pub fn send(&self, ev: ControlEvent) -> Result<(), LoopGone> {
        self.tx.send(ev).map_err(|_| LoopGone)?;
        let _ = self.wake.write(1);
        Ok(())
    }
}

/// The QMP greeting's version: the QEMU release whose QMP Kestrel follows (9.2, the
/// spec's baseline), so clients that gate features on it see the right ones; `package`
/// says who is really answering.
fn qmp_version() -> VersionInfo {
    VersionInfo::new(9, 2, 0, concat!("Kestrel ", env!("CARGO_PKG_VERSION")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("kestrel: {msg}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: Vec<String>) -> Result<i32, String> {
    let cfg = match cmdline::parse(args).map_err(|e| e.to_string())? {
        Action::Help => {
            print!("{}", cmdline::help_text());
            return Ok(0);
        }
        Action::Version => {
            println!("{}", cmdline::version_text());
            return Ok(0);
        }
        Action::Run(cfg) => cfg,
    };
    let vm_cfg = vm_config(&cfg)?;
    if cfg.daemonize {
        if cfg.nographic {
            return Err("-nographic cannot be used with -daemonize".into());
        }
        if cfg
            .serials
            .iter()
            .any(|b| matches!(b, ChardevBackend::Stdio))
        {
            return Err("-serial stdio cannot be used with -daemonize".into());
        }
    }
    // Everything that can fail on bad input is checked before we fork or touch the terminal.
    check_file(&vm_cfg.kernel, "kernel")?;
    if let Some(i) = &vm_cfg.initrd {
        check_file(i, "initrd")?;
    }

    if let Some(n) = &cfg.process_name {
        set_process_name(n);
    }
    let daemon = if cfg.daemonize {
        Some(daemonize()?)
    } else {
        None
    };
    let _pidfile = match &cfg.pidfile {
        Some(p) => Some(PidFile::create(p)?),
        None => None,
    };

    // Signals the event loop handles are blocked in every thread and taken by one.
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?);
    let (tx, rx) = channel();
    let tx = ControlSender {
        tx,
        wake: wake.clone(),
    };
    let signals = block_control_signals();
    vcpu::install_kick_handler()?;

    let quit_tx = tx.clone();
    let quit: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let _ = quit_tx.send(ControlEvent::Quit);
    });
    let mut raw_term = None;
    let mut serials = Vec::new();
    for backend in &cfg.serials {
        if *backend == Backend::Stdio && raw_term.is_none() {
            raw_term = RawTerminal::enter();
        }
        let esc = (*backend == Backend::Stdio).then(|| quit.clone());
        serials.push(Arc::new(
            Chardev::open(backend, esc).map_err(|e| e.to_string())?,
        ));
    }

    let mut mcfg = MonitorConfig::new(qmp_version());
    mcfg.actions = cfg.actions;
    let mut mon = Monitor::new(mcfg);
    qmp_commands::register(mon.registry_mut()).map_err(|e| format!("monitor setup: {e}"))?;
    qmp_devices::register(mon.registry_mut(), chardev_labels(&cfg))
        .map_err(|e| format!("monitor setup: {e}"))?;
    qmp_devices::register_events(mon.registry_mut()).map_err(|e| format!("monitor setup: {e}"))?;
    qmp_platform::register(mon.registry_mut()).map_err(|e| format!("monitor setup: {e}"))?;
    let mut memdevs: Vec<memory::MemdevInfo> = cfg
        .memory_backends
        .iter()
        .map(memory::MemdevInfo::from)
        .collect();
    if cfg.memory_backend.is_none() {
        memdevs.push(vm_cfg.ram.info());
    }
    qmp_memory::register(mon.registry_mut(), memdevs).map_err(|e| format!("monitor setup: {e}"))?;
    migrate_ops::register(mon.registry_mut()).map_err(|e| format!("monitor setup: {e}"))?;
    qmp_platform::register_events(mon.registry_mut()).map_err(|e| format!("monitor setup: {e}"))?;

    let fail = |daemon: Option<Daemon>, msg: String| -> Result<i32, String> {
        if let Some(d) = daemon {
            d.fail(&msg);
        }
        Err(msg)
    };
    // Monitor endpoints first: a `wait=on` one holds startup until its client connects.
    let mut endpoints = Vec::new();
    for m in &cfg.monitors {
        match qmp_transport::open_endpoint(&m.backend, m.pretty) {
            Ok(ep) => endpoints.push(ep),
            Err(e) => return fail(daemon, e),
        }
    }
    // Chardevs that devices use (virtio-serial ports): opened once, kept across reboots.
    let mut device_chardevs = std::collections::HashMap::new();
    for d in &cfg.devices {
        if let cmdline::devices::DeviceSpec::VirtioSerialPort { chardev, .. } = d {
            let Some(c) = cfg.chardevs.iter().find(|c| c.id == *chardev) else {
                continue;
            };
            match Chardev::open(&c.backend, None) {
                Ok(ch) => {
                    device_chardevs.insert(chardev.clone(), Arc::new(ch));
                }
                Err(e) => return fail(daemon, e.to_string()),
            }
        }
    }
    let identity = Identity {
        name: cfg.name.clone(),
        uuid: cfg.uuid,
    };
    let machine = match Machine::new(
        vm_cfg,
        identity,
        serials,
        device_chardevs,
        tx,
        cfg.incoming.is_some(),
    ) {
        Ok(m) => m,
        Err(e) => {
            drop(raw_term);
            return fail(daemon, e.to_string());
        }
    };
    let mut ev = match event_loop::EventLoop::new(machine, mon, wake, rx, &signals) {
        Ok(ev) => ev,
        Err(e) => return fail(daemon, format!("event loop: {e}")),
    };
    // Sessions first, so a client that held startup (wait=on) sees the start's events.
    for ep in endpoints {
        if let Err(e) = ev.add_endpoint(ep) {
            return fail(daemon, format!("monitor: {e}"));
        }
    }
    if let Some(incoming) = &cfg.incoming {
        // inmigrate until the stream has loaded; then running, or paused under -S.
        let start_paused = cfg.start_paused;
        let r = ev.with_machine(|machine, mon| -> Result<(), String> {
            mon.set_runstate(monitor::RunState::InMigrate)
                .map_err(|e| e.to_string())?;
            mon.set_autostart(!start_paused)
                .map_err(|e| e.to_string())?;
            if let cmdline::Incoming::Uri(uri) = incoming {
                let uri = migration::transport::parse(uri).map_err(|e| e.to_string())?;
                migrate_ops::steps::start_incoming(machine, uri, None, true, &mut |n, d| {
                    mon.emit(n, &d)
                })
                .map_err(|e| e.desc)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            return fail(daemon, e);
        }
    } else if !cfg.start_paused {
        if let Err(e) = ev.with_machine(|machine, mon| mon.handle(MachineEvent::Start, machine)) {
            return fail(daemon, format!("cannot start the machine: {e}"));
        }
    }
    if let Some(d) = daemon {
        d.ready();
    }
    let code = ev.run();
    drop(raw_term);
    Ok(code)
}

fn vm_config(cfg: &Config) -> Result<VmConfig, String> {
    let kernel = cfg.kernel.clone().ok_or(
        "no kernel given: Kestrel boots Linux directly and has no firmware; use -kernel PATH",
    )?;
    let cpu_model = match cfg.cpu.model.as_str() {
        "host" | "max" => arch::cpuid::CpuModel::Host,
        "qemu64" => arch::cpuid::CpuModel::Qemu64,
        other => return Err(format!("-cpu {other}: unknown CPU model")),
    };
    let num_cpus = u8::try_from(cfg.smp.cpus)
        .ok()
        .filter(|n| (1..=arch::mptable::MAX_CPUS).contains(n))
        .ok_or_else(|| {
            format!(
                "-smp {}: Kestrel supports 1 to {} CPUs",
                cfg.smp.cpus,
                arch::mptable::MAX_CPUS
            )
        })?;
    Ok(VmConfig {
        mem_size: cfg.mem_size,
        num_cpus,
        threads_per_core: cfg.smp.threads.clamp(1, 255) as u8,
        cores_per_socket: cfg.smp.cores.clamp(1, 255) as u8,
        kernel,
        initrd: cfg.initrd.clone(),
        cmdline: cfg.append.clone(),
        cpu_model,
        cpu_flags: cfg.cpu.flags.clone(),
        debug_thread_names: cfg.debug_threads,
        devices: cfg.devices.clone(),
        drives: cfg.drives.clone(),
        netdevs: cfg.netdevs.clone(),
        ram: Arc::new(match &cfg.memory_backend {
            Some(id) => {
                let b = cfg
                    .memory_backends
                    .iter()
                    .find(|b| b.id == *id)
                    .ok_or_else(|| format!("Memory backend '{id}' not found"))?;
                memory::RamBacking::open(b)?
            }
            None => memory::RamBacking::anonymous(cfg.mem_size),
        }),
        rtc: cfg.rtc,
    })
}

/// `query-chardev`'s list: every -chardev by id, and the implicit ones QEMU names
/// `serialN` and `compat_monitorN`, with QEMU-style filenames.
fn chardev_labels(cfg: &Config) -> Vec<qmp_devices::ChardevLabel> {
    use qmp_devices::{ChardevLabel, Frontend};
    fn filename(b: &ChardevBackend) -> String {
        match b {
            ChardevBackend::Stdio => "stdio".into(),
            ChardevBackend::Null => "null".into(),
            ChardevBackend::File { path, .. } => format!("file:{}", path.display()),
            ChardevBackend::UnixSocket { path, server, .. } => {
                format!(
                    "unix:{}{}",
                    path.display(),
                    if *server { ",server=on" } else { "" }
                )
            }
            ChardevBackend::TcpSocket {
                host, port, server, ..
            } => {
                format!(
                    "tcp:{host}:{port}{}",
                    if *server { ",server=on" } else { "" }
                )
            }
        }
    }
    // As QEMU: a serial port or monitor always has its chardev open, a virtio-serial
    // port when the guest opened it, and a chardev nothing uses is not open.
    let frontend = |id: &str| {
        let port = cfg.devices.iter().find_map(|d| match d {
            cmdline::devices::DeviceSpec::VirtioSerialPort {
                id: pid, chardev, ..
            } if chardev == id => Some(pid.clone().unwrap_or_else(|| chardev.clone())),
            _ => None,
        });
        let used = cfg.serial_chardevs.iter().flatten().any(|c| c == id)
            || cfg
                .monitors
                .iter()
                .any(|m| m.chardev.as_deref() == Some(id));
        match port {
            Some(p) => Frontend::Port(p),
            None if used => Frontend::Open,
            None => Frontend::Unused,
        }
    };
    let mut v: Vec<ChardevLabel> = cfg
        .chardevs
        .iter()
        .map(|c| ChardevLabel {
            label: c.id.clone(),
            filename: filename(&c.backend),
            frontend: frontend(&c.id),
        })
        .collect();
    for (i, (b, id)) in cfg.serials.iter().zip(&cfg.serial_chardevs).enumerate() {
        if id.is_none() {
            v.push(ChardevLabel {
                label: format!("serial{i}"),
                filename: filename(b),
                frontend: Frontend::Open,
            });
        }
    }
    for (i, m) in cfg.monitors.iter().enumerate() {
        if m.chardev.is_none() {
            v.push(ChardevLabel {
                label: format!("compat_monitor{i}"),
                filename: filename(&m.backend),
                frontend: Frontend::Open,
            });
        }
    }
    v
}

fn check_file(p: &PathBuf, what: &str) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!(
            "could not load {what} '{}': not a regular file",
            p.display()
        )),
        Err(e) => Err(format!(
            "could not load {what} '{}': {}",
            p.display(),
            strip_os_error(&e)
        )),
    }
}

/// "No such file or directory", without Rust's "(os error 2)" suffix.
fn strip_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `-name process=NAME`: what ps and top show (the kernel keeps 15 bytes of it).
fn set_process_name(name: &str) {
    let mut b: Vec<u8> = name.bytes().filter(|c| *c != 0).take(15).collect();
    b.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, b.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

const CONTROL_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn block_control_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask for this thread; threads
    // spawned afterwards inherit the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in CONTROL_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The console terminal in raw mode (as QEMU's -nographic sets it), restored on drop.
struct RawTerminal(libc::termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios calls on stdin with valid pointers; a non-tty fails and we skip.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            // Keep output post-processing so the guest's "\n" is not mangled by us.
            t.c_oflag = saved.c_oflag;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(RawTerminal(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.0) };
    }
}

/// A pid file holding our pid, locked while we run (so two instances can't share it)
/// and removed on exit, as QEMU's -pidfile.
struct PidFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl PidFile {
    fn create(path: &PathBuf) -> Result<PidFile, String> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| {
                format!(
                    "cannot open pid file '{}': {}",
                    path.display(),
                    strip_os_error(&e)
                )
            })?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "cannot lock pid file '{}': another instance holds it",
                path.display()
            ));
        }
        f.set_len(0)
            .map_err(|e| format!("pid file '{}': {e}", path.display()))?;
        writeln!(f, "{}", std::process::id())
            .map_err(|e| format!("pid file '{}': {e}", path.display()))?;
        Ok(PidFile {
            path: path.clone(),
            _file: f,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The child's side of -daemonize: tells the waiting parent whether startup worked.
struct Daemon(OwnedFd);

impl Daemon {
    fn ready(self) {
        let mut f = std::fs::File::from(self.0);
        let _ = f.write_all(&[0]);
        redirect_stdio_to_null();
    }

    fn fail(self, msg: &str) {
        let mut f = std::fs::File::from(self.0);
        let _ = f.write_all(format!("\x01{msg}").as_bytes());
    }
}

/// Forks: the parent waits for the child to report startup and exits with its verdict;
/// the child starts a new session and carries on. Called before any thread exists.
fn daemonize() -> Result<Daemon, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe/fork/setsid with valid arguments; no other thread exists yet.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err("cannot daemonize: pipe failed".into());
        }
        match libc::fork() {
            -1 => Err("cannot daemonize: fork failed".into()),
            0 => {
                libc::close(fds[0]);
                libc::setsid();
                Ok(Daemon(OwnedFd::from_raw_fd(fds[1])))
            }
            _ => {
                libc::close(fds[1]);
                let mut r = std::fs::File::from_raw_fd(fds[0]);
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                match buf.first() {
                    Some(0) => std::process::exit(0),
                    Some(1) => {
                        eprintln!("kestrel: {}", String::from_utf8_lossy(&buf[1..]));
                        std::process::exit(1)
                    }
                    _ => {
                        eprintln!("kestrel: the daemon exited during startup");
                        std::process::exit(1)
                    }
                }
            }
        }
    }
}

fn redirect_stdio_to_null() {
    // SAFETY: dup2 of a freshly opened /dev/null over our own stdio fds.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

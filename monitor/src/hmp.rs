//! The human monitor, as reached through `human-monitor-command`: a small command table
//! with QEMU's parsing rules, output texts and error wording. The commands call the same
//! functions as their QMP twins, so both paths raise the same events.
//!
//! Output lines end in CRLF, as QEMU's monitor writes them. A failing command is not a
//! QMP error: its text is `Error: <reason>` in the returned string, like QEMU's.

use crate::control::{
    cpus_fast, do_cont, do_inject_nmi, do_quit, do_stop, do_system_powerdown, do_system_reset,
    do_system_wakeup,
};
use crate::qmp_error::QmpError;
use crate::registry::CommandContext;
use crate::runstate::RunState;
use std::fmt::Write as _;

type Action = fn(&mut CommandContext<'_>, Option<i64>, &mut String) -> Result<(), QmpError>;

struct Cmd {
    /// Names separated by `|`, as QEMU prints them.
    name: &'static str,
    params: &'static str,
    help: &'static str,
    run: Option<Action>,
}

/// Adapts a QMP run-control function (no output of its own) to the table.
macro_rules! plain {
    ($f:path) => {
        Some(
            |ctx: &mut CommandContext<'_>, _cpu: Option<i64>, _out: &mut String| {
                $f(ctx).map(|_| ())
            },
        )
    };
}

const COMMANDS: &[Cmd] = &[
    Cmd {
        name: "cont|c",
        params: "",
        help: "resume emulation",
        run: plain!(do_cont),
    },
    Cmd {
        name: "help|?",
        params: "[cmd]",
        help: "show the help",
        run: None,
    },
    Cmd {
        name: "info",
        params: "[subcommand]",
        help: "show various information about the system state",
        run: None,
    },
    Cmd {
        name: "nmi",
        params: "",
        help: "inject an NMI",
        run: plain!(do_inject_nmi),
    },
    Cmd {
        name: "quit|q",
        params: "",
        help: "quit the emulator",
        run: plain!(do_quit),
    },
    Cmd {
        name: "stop|s",
        params: "",
        help: "stop emulation",
        run: plain!(do_stop),
    },
    Cmd {
        name: "system_powerdown",
        params: "",
        help: "send system power down event",
        run: plain!(do_system_powerdown),
    },
    Cmd {
        name: "system_reset",
        params: "",
        help: "reset the system",
        run: plain!(do_system_reset),
    },
    Cmd {
        name: "system_wakeup",
        params: "",
        help: "wakeup guest from suspend",
        run: plain!(do_system_wakeup),
    },
];

const INFO: &[Cmd] = &[
    Cmd {
        name: "cpus",
        params: "",
        help: "show infos for each CPU",
        run: Some(info_cpus),
    },
    Cmd {
        name: "kvm",
        params: "",
        help: "show KVM information",
        run: Some(info_kvm),
    },
    Cmd {
        name: "name",
        params: "",
        help: "show the current VM name",
        run: Some(info_name),
    },
    Cmd {
        name: "registers",
        params: "",
        help: "show the cpu registers",
        run: Some(info_registers),
    },
    Cmd {
        name: "status",
        params: "",
        help: "show the current VM status (running|paused)",
        run: Some(info_status),
    },
    Cmd {
        name: "uuid",
        params: "",
        help: "show the current VM UUID",
        run: Some(info_uuid),
    },
    Cmd {
        name: "version",
        params: "",
        help: "show the version of QEMU",
        run: Some(info_version),
    },
];

fn info_status(
    ctx: &mut CommandContext<'_>,
    _: Option<i64>,
    out: &mut String,
) -> Result<(), QmpError> {
    let st = ctx.vm.status();
    let _ = write!(
        out,
        "VM status: {}",
        if st.running { "running" } else { "paused" }
    );
    if !st.running && st.status != RunState::Paused {
        let _ = write!(out, " ({})", st.status);
    }
    out.push('\n');
    Ok(())
}

fn info_version(
    ctx: &mut CommandContext<'_>,
    _: Option<i64>,
    out: &mut String,
) -> Result<(), QmpError> {
    let v = ctx.version;
    // QEMU prints its package string in parentheses after the version, when it has one.
    let _ = write!(out, "{}.{}.{}", v.qemu.major, v.qemu.minor, v.qemu.micro);
    if !v.package.is_empty() {
        let _ = write!(out, " ({})", v.package);
    }
    out.push('\n');
    Ok(())
}

fn info_registers(
    ctx: &mut CommandContext<'_>,
    cpu: Option<i64>,
    out: &mut String,
) -> Result<(), QmpError> {
    // The monitor's current CPU: cpu-index if given, else the first.
    let index = cpu.unwrap_or(0);
    let text = ctx.machine.cpu_registers(index).map_err(QmpError::from)?;
    out.push_str(&text);
    Ok(())
}

fn info_name(
    ctx: &mut CommandContext<'_>,
    _: Option<i64>,
    out: &mut String,
) -> Result<(), QmpError> {
    if let Some(n) = ctx.machine.name() {
        let _ = writeln!(out, "{n}");
    }
    Ok(())
}

fn info_uuid(
    ctx: &mut CommandContext<'_>,
    _: Option<i64>,
    out: &mut String,
) -> Result<(), QmpError> {
    let _ = writeln!(out, "{}", ctx.machine.uuid());
    Ok(())
}

fn info_kvm(
    ctx: &mut CommandContext<'_>,
    _: Option<i64>,
    out: &mut String,
) -> Result<(), QmpError> {
    let k = ctx.machine.kvm();
    out.push_str("kvm support: ");
    if k.present {
        out.push_str(if k.enabled { "enabled\n" } else { "disabled\n" });
    } else {
        out.push_str("not compiled\n");
    }
    Ok(())
}

fn info_cpus(
    ctx: &mut CommandContext<'_>,
    cpu: Option<i64>,
    out: &mut String,
) -> Result<(), QmpError> {
    let cpus = cpus_fast(&*ctx.machine);
    // The monitor's current CPU is the one given by cpu-index, else the first one.
    let current = cpu.or_else(|| cpus.first().map(|c| c.cpu_index));
    for c in cpus {
        let mark = if Some(c.cpu_index) == current {
            '*'
        } else {
            ' '
        };
        let _ = writeln!(
            out,
            "{mark} CPU #{}: thread_id={}",
            c.cpu_index, c.thread_id
        );
    }
    Ok(())
}

fn find<'a>(table: &'a [Cmd], name: &str) -> Option<&'a Cmd> {
    table.iter().find(|c| c.name.split('|').any(|n| n == name))
}

/// QEMU's `get_command_name`: skip blanks, then a name ends at a blank or `/`.
/// Returns the name and the byte offset just after it.
fn command_name(line: &str, from: usize) -> Option<(&str, usize)> {
    let rest = &line[from..];
    let start = from + (rest.len() - rest.trim_start().len());
    let tail = &line[start..];
    if tail.is_empty() {
        return None;
    }
    let len = tail
        .find(|c: char| c.is_ascii_whitespace() || c == '/')
        .unwrap_or(tail.len());
    Some((&line[start..start + len], start + len))
}

fn help_line(prefix: &str, c: &Cmd, out: &mut String) {
    let _ = writeln!(out, "{prefix}{} {} -- {}", c.name, c.params, c.help);
}

/// Runs one command line; returns its output (CRLF line ends).
pub fn run(
    ctx: &mut CommandContext<'_>,
    line: &str,
    cpu_index: Option<i64>,
) -> Result<String, QmpError> {
    if let Some(i) = cpu_index {
        if !ctx.machine.cpus().iter().any(|c| c.index == i) {
            return Err(QmpError::generic(
                "Parameter 'cpu-index' expects a CPU number",
            ));
        }
    }
    let mut out = String::new();
    execute(ctx, line, cpu_index, &mut out);
    Ok(out.replace('\n', "\r\n"))
}

fn execute(ctx: &mut CommandContext<'_>, line: &str, cpu: Option<i64>, out: &mut String) {
    let Some((name, end)) = command_name(line, 0) else {
        return;
    };
    let Some(cmd) = find(COMMANDS, name) else {
        let _ = writeln!(out, "unknown command: '{}'", &line[..end]);
        return;
    };
    let (cmd, end, is_help) = match cmd.name {
        "info" => match command_name(line, end) {
            None => {
                for c in INFO {
                    help_line("info ", c, out);
                }
                return;
            }
            Some((sub, sub_end)) => match find(INFO, sub) {
                Some(c) => (c, sub_end, false),
                None => {
                    let _ = writeln!(out, "unknown command: '{}'", &line[..sub_end]);
                    return;
                }
            },
        },
        "help|?" => (cmd, end, true),
        _ => (cmd, end, false),
    };
    if is_help {
        help(line, end, out);
        return;
    }
    if !line[end..].trim().is_empty() {
        let _ = writeln!(
            out,
            "{}: extraneous characters at the end of line",
            cmd.name
        );
        let _ = writeln!(
            out,
            "Try \"help {}\" for more information",
            line[..end].trim_end()
        );
        return;
    }
    if let Some(run) = cmd.run {
        if let Err(e) = run(ctx, cpu, out) {
            let _ = writeln!(out, "Error: {}", e.desc);
        }
    }
}

fn help(line: &str, from: usize, out: &mut String) {
    match command_name(line, from) {
        None => {
            for c in COMMANDS {
                help_line("", c, out);
            }
        }
        Some((name, end)) => match find(COMMANDS, name) {
            Some(c) if c.name == "info" => match command_name(line, end) {
                None => INFO.iter().for_each(|c| help_line("info ", c, out)),
                Some((sub, _)) => match find(INFO, sub) {
                    Some(c) => help_line("info ", c, out),
                    None => {
                        let _ = writeln!(out, "unknown command: '{}'", line[from..].trim());
                    }
                },
            },
            Some(c) => help_line("", c, out),
            None => {
                let _ = writeln!(out, "unknown command: '{name}'");
            }
        },
    }
}

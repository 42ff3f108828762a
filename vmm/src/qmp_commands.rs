//! QMP commands that belong to the vmm rather than the protocol crate: they need the
//! command line's option table or host resources (see also `fdpass`).

use monitor::{CommandContext, Empty, QmpError, Registry};

use crate::cmdline::OPTION_PARAMETERS;
use crate::fdpass::{AddFdArgs, AddfdInfo, FdNameArgs, FdStore, RemoveFdArgs};
use crate::machine::Machine;

monitor::qmp_struct! {
    /// Arguments of `query-command-line-options`.
    #[derive(Debug, Clone)]
    pub struct CmdlineOptionsArgs {
        pub option: Option<String> = "option",
    }
}

monitor::qmp_enum! {
    /// `CommandLineParameterType`.
    pub enum CommandLineParameterType {
        String = "string",
        Boolean = "boolean",
        Number = "number",
        Size = "size",
    }
}

monitor::qmp_struct! {
    /// `CommandLineParameterInfo`.
    #[derive(Debug, Clone)]
    pub struct CommandLineParameterInfo {
        pub name: String = "name",
        pub ty: CommandLineParameterType = "type",
        pub help: Option<String> = "help",
        pub default: Option<String> = "default",
    }
}

monitor::qmp_struct! {
    /// `CommandLineOptionInfo`.
    #[derive(Debug, Clone)]
    pub struct CommandLineOptionInfo {
        pub option: String = "option",
        pub parameters: Vec<CommandLineParameterInfo> = "parameters",
    }
}

fn option_infos(only: Option<&str>) -> Result<Vec<CommandLineOptionInfo>, QmpError> {
    let v: Vec<CommandLineOptionInfo> = OPTION_PARAMETERS
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == *name))
        .map(|(name, params)| CommandLineOptionInfo {
            option: name.to_string(),
            parameters: params
                .iter()
                .map(|(p, ty)| CommandLineParameterInfo {
                    name: p.to_string(),
                    ty: CommandLineParameterType::from_wire(ty)
                        .unwrap_or(CommandLineParameterType::String),
                    help: None,
                    default: None,
                })
                .collect(),
        })
        .collect();
    match only {
        Some(o) if v.is_empty() => Err(QmpError::generic(format!("invalid option name: {o}"))),
        _ => Ok(v),
    }
}

fn store<'a>(ctx: &'a mut CommandContext<'_>) -> Result<&'a mut FdStore, QmpError> {
    ctx.machine
        .as_any_mut()
        .downcast_mut::<Machine>()
        .map(|m| m.fds())
        .ok_or_else(|| QmpError::generic("internal error: not Kestrel's machine"))
}

/// Registers the fd-passing commands.
fn register_fdpass(r: &mut Registry) -> Result<(), monitor::Error> {
    r.register("getfd", |ctx, a: FdNameArgs| {
        store(ctx)?.getfd(&a.fdname).map(|_| Empty {})
    })?;
    r.register("closefd", |ctx, a: FdNameArgs| {
        store(ctx)?.closefd(&a.fdname).map(|_| Empty {})
    })?;
    r.register("add-fd", |ctx, a: AddFdArgs| {
        let (fdset_id, fd) = store(ctx)?.add_fd(a.fdset_id, a.opaque)?;
        Ok(AddfdInfo { fdset_id, fd })
    })?;
    r.register("remove-fd", |ctx, a: RemoveFdArgs| {
        store(ctx)?.remove_fd(a.fdset_id, a.fd).map(|_| Empty {})
    })?;
    r.register("query-fdsets", |ctx, _: Empty| Ok(store(ctx)?.fdsets()))?;
    Ok(())
}

/// Registers the vmm's own commands.
pub fn register(r: &mut Registry) -> Result<(), monitor::Error> {
    register_fdpass(r)?;
    r.register("query-command-line-options", |_, a: CmdlineOptionsArgs| {
        option_infos(a.option.as_deref())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_option_or_all_or_an_error() {
        let smp = option_infos(Some("smp-opts")).unwrap();
        assert_eq!(smp.len(), 1);
        assert!(smp[0].parameters.iter().any(|p| p.name == "cpus"));
        assert_eq!(option_infos(None).unwrap().len(), OPTION_PARAMETERS.len());
        assert_eq!(
            option_infos(Some("bogus")).unwrap_err().desc,
            "invalid option name: bogus"
        );
    }
}

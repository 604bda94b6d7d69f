//! `[esmtp] ports`: the TCP ports whose sessions are inspected (25 by
//! default; 587, submission, is the usual addition). The kernel classifier
//! and steering take the list as it is; the engine inspects every listed
//! port alike.

use toml::Spanned;

use super::FieldError;

/// The ports inspected when the policy lists none.
pub const DEFAULT_PORTS: [u16; 1] = [25];
/// Most ports a policy can list (the kernel classifier's slots).
pub const MAX_PORTS: usize = 8;

/// The list as written, checked: 1 to [`MAX_PORTS`] ports, each from 1 to
/// 65535, none twice.
pub fn compile(ports: Option<&Spanned<Vec<Spanned<i64>>>>) -> Result<Vec<u16>, FieldError> {
    let Some(list) = ports else {
        return Ok(DEFAULT_PORTS.to_vec());
    };
    let n = list.get_ref().len();
    if n == 0 || n > MAX_PORTS {
        return Err(FieldError::at(
            list,
            "esmtp.ports",
            format!("expected 1 to {MAX_PORTS} ports, not {n}"),
        ));
    }
    let mut out: Vec<u16> = Vec::with_capacity(n);
    for (i, p) in list.get_ref().iter().enumerate() {
        let field = format!("esmtp.ports[{i}]");
        let port = u16::try_from(*p.get_ref())
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| {
                FieldError::at(
                    p,
                    &field,
                    format!("{} is not a TCP port (1 to 65535)", p.get_ref()),
                )
            })?;
        if let Some(first) = out.iter().position(|&q| q == port) {
            return Err(FieldError::at(
                p,
                field,
                format!("port {port} is listed twice (also esmtp.ports[{first}])"),
            ));
        }
        out.push(port);
    }
    Ok(out)
}

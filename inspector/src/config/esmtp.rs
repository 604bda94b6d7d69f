//! `[esmtp]`: the ESMTP inspection policy, whose TOML form and compiler
//! live in `inspector-esmtp`; here it joins the other sections.

use inspector_esmtp::policy::{EsmtpPolicy, EsmtpSection, FieldError};

use super::Section;

/// The submission port (RFC 6409 section 3.1).
pub const SUBMISSION_PORT: u16 = 587;

/// A warning when the policy inspects the submission port but masks
/// STARTTLS. Submission clients authenticate (an MSA refuses MAIL before
/// AUTH by default, RFC 6409 section 4.3) and RFC 8314 section 3.3 has
/// them do it under TLS: with STARTTLS masked they either give up or send
/// their password in clear. The inspection itself is the same on every
/// port (AUTH is one of the base verbs), so this is a warning, not a rule.
pub fn submission_warning(policy: &EsmtpPolicy) -> Option<String> {
    (policy.ports.contains(&SUBMISSION_PORT) && policy.allow_tls.is_none()).then(|| {
        format!(
            "esmtp.ports lists {SUBMISSION_PORT} (submission) but allow-tls is false: STARTTLS is masked, so submission clients give up or authenticate in clear (RFC 6409 section 4.3, RFC 8314 section 3.3); set allow-tls = true or \"log\""
        )
    })
}

impl Section for EsmtpSection {
    type Compiled = EsmtpPolicy;

    fn compile(&self) -> Result<EsmtpPolicy, FieldError> {
        // The inherent `compile`, which resolves before this trait's.
        EsmtpSection::compile(self)
    }
}

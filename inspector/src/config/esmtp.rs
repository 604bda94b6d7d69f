//! `[esmtp]`: the ESMTP inspection policy, whose TOML form and compiler
//! live in `inspector-esmtp`; here it joins the other sections.

use inspector_esmtp::policy::{EsmtpPolicy, EsmtpSection, FieldError};

use super::Section;

impl Section for EsmtpSection {
    type Compiled = EsmtpPolicy;

    fn compile(&self) -> Result<EsmtpPolicy, FieldError> {
        // The inherent `compile`, which resolves before this trait's.
        EsmtpSection::compile(self)
    }
}

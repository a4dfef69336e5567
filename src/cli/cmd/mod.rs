//! One short file per subcommand: parse references, open stores, call the library, print.

pub mod copy;
pub mod crypt;
pub mod inspect;
pub mod keygen;
pub mod pack;
pub mod pull;

use crate::error::Error;
use crate::reference::ImageRef;
use crate::store::Store;

use super::Context;

pub(crate) async fn open(
    ctx: &Context,
    reference: &str,
    push: bool,
) -> Result<(ImageRef, Store), Error> {
    let r: ImageRef = reference.parse()?;
    let store = Store::open(&r, &ctx.registry, push).await?;
    Ok((r, store))
}

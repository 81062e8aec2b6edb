//! The media stage's way back into the core: a request it could not anchor (malformed SDP,
//! rtpengine's refusal, no rtpengine with the `reject` policy) was never sent, and its
//! caller gets the stage's answer. The failure is not the destination's: no failover, and
//! nothing counts against it.

use super::{Answer, Core, Env, SState};
use crate::relay::Action;
use crate::telemetry::ResponseOrigin;

impl Core {
    /// The client transaction `token` was not sent because the media stage refused it:
    /// it ends, and its server transaction answers `status` `reason` (with Retry-After when
    /// given) unless it has already moved on.
    pub fn on_media_refused(
        &self,
        env: &Env<'_>,
        token: &[u8],
        (status, reason, retry_after): (u16, &str, Option<u32>),
        out: &mut Vec<Action>,
    ) {
        let mut st = self.lock();
        let Some(ctx) = st.client.remove(token) else {
            return;
        };
        if ctx.invite
            && let Some((d, _)) = &ctx.dest
        {
            d.call_ended();
        }
        let Some(skey) = ctx.server else { return };
        let Some(stx) = st.server.get_mut(&skey) else {
            return;
        };
        if stx.state != SState::Proceeding || stx.branch.as_deref() != Some(token) {
            return;
        }
        let Some(req) = stx.req.clone() else { return };
        let secs = retry_after.map(crate::sip::build::itoa);
        let headers: &[(&str, &[u8])] = match &secs {
            Some(s) => &[("Retry-After", s.as_slice())],
            None => &[],
        };
        let a = Answer::new(status, reason).with(headers);
        let data = self.answer_bytes(&req, a);
        let dest = ctx.dest.as_ref().map(|d| d.0.uri.clone());
        self.finish_server(
            env,
            stx,
            &skey,
            status,
            (ResponseOrigin::Local, data),
            dest.as_deref(),
            out,
        );
    }
}

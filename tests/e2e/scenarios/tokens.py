"""Tokens: the ones LiveKit's server refuses at a join, and a join's token that expires before
the library reconnects."""

import asyncio
import time

from harness.backend import joined_hearing, let_go, own_bridge, read_chunks, RealCtx, TwoWay
from harness.livekit_server import token
from harness.phones import phone_for
from harness.report import check, result


async def real_tokens(ctx: RealCtx):
    """Tokens LiveKit's server refuses: JoinRoom answers success: false with the reason, and a
    session already in the room is untouched."""
    bystander = "jay"
    target = await phone_for(bystander)
    call, queue = await joined_hearing(ctx, bystander, target)
    tokens = []
    for name, tok, said in [
            ("expired", token("cloud-agent:kim", "kim", ttl_s=-60), "token is expired"),
            ("wrong_secret", token("cloud-agent:kim", "kim", secret="not-the-servers-secret-0123456789"),
             "signature is invalid"),
            ("garbage", "not-a-jwt", "invalid authorization token"),
            ("another_room", token("cloud-agent:kim", "elsewhere"),
             'the token grants room "elsewhere", not room_name "kim"')]:
        asked = time.monotonic()
        r = await ctx.join("kim", tok=tok)
        check(not r.success, f"{name}: the join succeeded")
        check("could not connect" in r.error, f"{name}: {r.error}")
        check(tok not in r.error, f"{name}: the answer echoes the token: {r.error}")
        check(said in r.error, f"{name}: the answer does not say {said!r}: {r.error}")
        tokens.append(tok)
        result(f"real_token_{name}", f"{r.error!r} after {(time.monotonic() - asked) * 1000:.0f} ms")
    await target.send_data(b"\x00" + bytes(320))
    await read_chunks(call, 1)
    status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=bystander))
    check(status.connected, "the bystander lost its room")
    with open(ctx.bridge.log.name) as f:
        log = f.read()
    leaks = [line for line in log.splitlines() if any(t in line for t in tokens[:2])]
    check(not leaks, f"the bridge's log holds a refused token: {leaks[:1]!r:.600}")
    queue.put_nowait(None)
    await target.leave()


async def real_token_refresh(ctx: RealCtx):
    """A join whose token expires 10 s after it is issued, then an outage after 15 s: every
    reconnect presents a token, and the library uses the one the server refreshed, so the
    session survives and audio comes back."""
    bridge, bctx = await own_bridge(ctx)
    user = "quinn"
    phone = await phone_for(user)
    try:
        r = await bctx.join(user, tok=token(f"cloud-agent:{user}", user, ttl_s=10))
        check(r.success, f"join: {r.error}")
        flow = TwoWay(bctx, user, phone)
        await flow.start()
        await asyncio.sleep(15)  # the join's token has expired
        bridge.network.set(False)
        await asyncio.sleep(3)
        bridge.network.set(True)
        down, up = await flow.back_since(time.monotonic(), 30)
        result("real_refresh_stream", "open" if flow.ended is None else f"{flow.ended}")
        result("real_refresh_back_ms", "never" if down is None else f"{down * 1000:.0f}")
        check(flow.ended is None, f"the stream ended: {flow.ended}")
        check(down is not None and up is not None, f"audio did not come back: {down} {up}")
        await flow.stop()
    finally:
        await let_go(phone, bctx, bridge)


SCENARIOS = {
    "real_token_refresh": real_token_refresh,
    "real_tokens": real_tokens,
}

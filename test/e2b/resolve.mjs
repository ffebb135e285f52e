// Preloaded (node --import) for the E2B SDKs that reach a daemon only over
// https at api.<domain> and <port>-<id>.<domain> (1.x, early 2.x): names
// under EMBER_E2B_DOMAIN resolve to the loopback address the test's daemon
// listens on, as a wildcard DNS record would for a real deployment. The SDK
// itself runs unchanged.
import dns from 'node:dns'

const domain = process.env.EMBER_E2B_DOMAIN
const lookup = dns.lookup

dns.lookup = function (host, opts, cb) {
  if (typeof opts === 'function') {
    cb = opts
    opts = {}
  }
  if (domain && (host === domain || host.endsWith('.' + domain))) {
    const all = typeof opts === 'object' && opts?.all
    return process.nextTick(() => (all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4)))
  }
  return lookup.call(this, host, opts, cb)
}

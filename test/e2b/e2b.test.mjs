// The E2B tier against the pinned SDK (this directory's e2b, 2.51.0):
// test/e2b's Go test starts a daemon and runs this with E2B_API_URL,
// E2B_SANDBOX_URL and E2B_API_KEY set.
import * as sdk from 'e2b'
import { e2bFlows } from './flows.mjs'

e2bFlows(sdk)

// The E2B tier against an early 2.x SDK (2.0.1, this directory's e2b): it
// reaches the daemon over https at E2B_DOMAIN.
import * as sdk from 'e2b'
import { e2bFlows } from '../flows.mjs'

e2bFlows(sdk)

// `skymesh dashboard [--open]`: a one-time URL that signs a browser into the agent's web dashboard
// (the code in it is good once, for two minutes; the browser then holds a session cookie).
import { spawn } from 'node:child_process'
import type { Command } from 'commander'
import type { ApiClient } from '../client.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { type CliIo, printJson } from '../io.js'

type Opts = ConnectionOptions & { json?: boolean; open?: boolean }

export interface DashboardLink {
  url: string
  expiresAt: string
}

/** Asks the agent for a one-time code and makes the URL that redeems it. */
export async function dashboardLink(client: ApiClient): Promise<DashboardLink> {
  const r = await client.request<{ path: string; expiresAt: string }>('POST', '/v1/dashboard/codes')
  return { url: `${client.baseUrl}${r.path}`, expiresAt: r.expiresAt }
}

export function registerDashboardCommand(program: Command, io: CliIo): void {
  addConnectionOptions(
    program
      .command('dashboard')
      .description("print a one-time URL that opens the agent's web dashboard (valid once, for 2 minutes)")
      .option('--open', 'also try to open it in a browser'),
  ).action(async (opts: Opts) => {
    const client = await connect(opts, io)
    const link = await dashboardLink(client)
    if (opts.json) return printJson(io, link)
    io.stdout.write(
      `${link.url}\n(one-time link, valid until ${link.expiresAt}; later sign in at ${client.baseUrl}/dashboard/ with the API token)\n`,
    )
    if (opts.open && !openInBrowser(link.url))
      io.stderr.write('could not start a browser here: open the URL above yourself\n')
  })
}

/** Starts the desktop's URL opener, detached; false when there is none to start. */
function openInBrowser(url: string): boolean {
  const [cmd, args] =
    process.platform === 'darwin'
      ? ['open', [url]]
      : process.platform === 'win32'
        ? ['cmd', ['/c', 'start', '', url]]
        : ['xdg-open', [url]]
  try {
    const child = spawn(cmd, args, { detached: true, stdio: 'ignore' })
    child.on('error', () => {})
    child.unref()
    return child.pid !== undefined
  } catch {
    return false
  }
}

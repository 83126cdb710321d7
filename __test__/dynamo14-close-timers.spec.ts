// A closed `dynamo-1.4` publisher leaves no timer behind: a process that closed it can exit at once
// instead of waiting out closeTimeoutMs. Checked in a child process, whose active resources are only its own.
import test from 'ava'
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

test('after close() of a dynamo-1.4 publisher no timer keeps the process alive', async (t) => {
  const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-close-timers-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  const { stdout } = await promisify(execFile)(process.execPath, ['--import=tsx', 'helpers/closed-publisher-child.ts', root], {
    cwd: new URL('.', import.meta.url).pathname,
    env: process.env,
  })
  const resources = JSON.parse(stdout.trim().split('\n').pop()!) as string[]
  t.false(resources.includes('Timeout'), `still active after close(): ${resources.join(', ')}`)
})

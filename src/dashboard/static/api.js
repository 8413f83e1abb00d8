// The page's actions go through the agent's REST API (the routes the CLI uses), proxied under
// /dashboard/api with the session cookie and the dashboard header.
export async function api(method, path, body) {
  const res = await fetch(`/dashboard/api${path}`, {
    method,
    headers: {
      'x-skymesh-dashboard': '1',
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
  })
  const text = await res.text()
  let parsed
  try {
    parsed = text ? JSON.parse(text) : undefined
  } catch {
    parsed = text
  }
  if (res.status === 401) location.assign('/dashboard/login')
  if (!res.ok) throw new Error(parsed?.error?.message ?? `HTTP ${res.status}`)
  return parsed
}

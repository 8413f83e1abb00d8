// The login page: trades the API token for a session cookie, then opens the dashboard.
const form = document.getElementById('login')
const message = document.getElementById('message')
document.getElementById('token').focus()

if (new URLSearchParams(location.search).has('expired'))
  message.textContent =
    'That one-time link was used or has expired: sign in with the token, or ask for a new link.'

form.addEventListener('submit', async (e) => {
  e.preventDefault()
  message.textContent = ''
  const token = document.getElementById('token').value.trim()
  try {
    const res = await fetch('/dashboard/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token }),
      credentials: 'same-origin',
    })
    if (res.ok) {
      location.assign('/dashboard/')
      return
    }
    const body = await res.json().catch(() => ({}))
    message.textContent = body?.error?.message ?? `sign-in failed (${res.status})`
  } catch (err) {
    message.textContent = `cannot reach the agent: ${err.message}`
  }
})

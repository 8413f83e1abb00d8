/** QOM id of a migration's tls-creds-psk object (QEMU's own TLS; one migration per QEMU at a time). */
export const QEMU_TLS_CREDS = 'skymesh-mig-tls'

// libp2p v3 calls Promise.withResolvers, which Node 20 lacks (it arrived in Node 22). Without it a
// noise handshake fails with EncryptionFailedError/ECONNRESET. Import this module before libp2p.
type Resolvers<T> = {
  promise: Promise<T>
  resolve: (v: T | PromiseLike<T>) => void
  reject: (e?: unknown) => void
}

const P = Promise as unknown as { withResolvers?: <T>() => Resolvers<T> }
if (typeof P.withResolvers !== 'function') {
  P.withResolvers = function withResolvers<T>(this: PromiseConstructor): Resolvers<T> {
    let resolve!: Resolvers<T>['resolve']
    let reject!: Resolvers<T>['reject']
    const promise = new this<T>((res, rej) => {
      resolve = res
      reject = rej
    })
    return { promise, resolve, reject }
  }
}

export {}

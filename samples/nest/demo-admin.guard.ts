import type { IncomingMessage } from 'node:http';
import { type CanActivate, type ExecutionContext, Injectable, UnauthorizedException } from '@nestjs/common';
import { demoAdminRefusal } from '../shared/demo-admin.js';

/** The Nest sample's admin check for the dashboard: the stand-in of samples/shared/demo-admin.ts. */
@Injectable()
export class DemoAdminGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const refusal = demoAdminRefusal(context.switchToHttp().getRequest<IncomingMessage>());
    if (refusal === 401)
      throw new UnauthorizedException('Who are you? (the sample: X-User header or user cookie)');
    return refusal === null;
  }
}

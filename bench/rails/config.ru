# frozen_string_literal: true
#
# The Rails ActionCable peer for scripts/bench: a minimal ActionCable server (Debian's
# ruby-actioncable 6.1, ruby-activerecord, ruby-pg, puma) with the PostgreSQL subscription
# adapter and a RoomChannel equivalent to cable-gateway's:
#   - subscribed: look the token up in the same tables as the gateway (users + account_users
#     for an agent, contact_inboxes + contacts for a contact session), `stream_from` the
#     pubsub_token, reject otherwise;
#   - fed the way a Rails backend feeds it: one broadcast (NOTIFY on the stream's channel)
#     per recipient token; the bench sends those NOTIFYs itself.
# No presence, no per-account streams: less work per subscribe than the gateway does.
#
#   DATABASE_URL=postgres://... puma -b tcp://127.0.0.1:8090 bench/rails/config.ru

require "logger"
require "active_record"
require "action_cable"

ActiveRecord::Base.establish_connection(
  ENV.fetch("DATABASE_URL") + (ENV.fetch("DATABASE_URL").include?("?") ? "&" : "?") + "pool=#{Integer(ENV.fetch("RAILS_DB_POOL", "12"))}"
)
ActiveRecord::Base.logger = nil

class User < ActiveRecord::Base; end
class AccountUser < ActiveRecord::Base; end
class Contact < ActiveRecord::Base; end
class ContactInbox < ActiveRecord::Base; end

module ApplicationCable
  # Like Chatwoot's: no connection-level authentication, tokens are checked per subscription.
  class Connection < ActionCable::Connection::Base; end
  class Channel < ActionCable::Channel::Base; end
end

class RoomChannel < ApplicationCable::Channel
  def subscribed
    token = params[:pubsub_token].to_s
    return reject if token.empty?

    if params[:user_id].present?
      user = User.find_by(pubsub_token: token)
      return reject unless user && user.id.to_s == params[:user_id].to_s
      return reject unless AccountUser.exists?(user_id: user.id, account_id: params[:account_id])
    else
      contact_inbox = ContactInbox.find_by(pubsub_token: token)
      return reject unless contact_inbox
      if params[:account_id].present?
        contact = Contact.find_by(id: contact_inbox.contact_id)
        return reject unless contact && contact.account_id.to_s == params[:account_id].to_s
      end
    end
    stream_from token
  end
end

ActionCable.server.config.tap do |config|
  config.cable = { "adapter" => "postgresql" }
  config.connection_class = -> { ApplicationCable::Connection }
  config.disable_request_forgery_protection = true
  config.worker_pool_size = Integer(ENV.fetch("RAILS_CABLE_WORKERS", "4"))
  config.logger = Logger.new($stderr, level: Logger::WARN)
end

map "/cable" do
  run ActionCable.server
end
